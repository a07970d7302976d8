"""`pointwear batch` on real Ray. An existing cluster (a local Ray with 2 CPUs held by another
process, given with `--ray ADDRESS`): one of its workers is killed (SIGKILL) while it fits a
subject; Ray runs that subject again, it resumes, and every subject finishes exactly once with its
outputs; a rerun skips them all. The default local instance: a failing subject is reported and
the others go on. Subjects are tiny (2 frames, 64 px) and the steps few, so the whole file takes
about a minute on 2 shared cores."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pointwear.batch import STATE_DONE, STATE_FAILED, STATE_SKIPPED, BatchOptions, plan
from pointwear.cli import build_parser

FIT = "--template tshirt-shorts --codes 1 --coarse-steps 4 --fine-steps 2 --device cpu"
APPEARANCE = "--epochs 1 --size 32 --device cpu"
RUN_TIMEOUT = 600.0                  # a hang guard, not a speed check: a loaded 2-core CI machine took > 240 s
# Ray >= 2.59 protects a local cluster with a token (~/.ray/auth_token); a second driver that
# connects by address must say it uses token auth too (ray-security/token-auth in Ray's docs).
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def ray_cluster():
    """The address of a local Ray cluster with 2 CPUs that another process started and holds
    (it shuts the cluster down when its stdin closes)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys; ray.init(num_cpus=2, include_dashboard=False, "
         "logging_level='ERROR'); print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=RAY_ENV)
    try:
        address = holder.stdout.readline().strip()
        assert address, "the Ray cluster did not start"
        yield address
    finally:
        holder.stdin.close()
        try:
            holder.wait(60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


@pytest.fixture(scope="module")
def subjects(tmp_path_factory) -> list[Path]:
    from pointwear.cli import main
    base = tmp_path_factory.mktemp("batch-subjects")
    out = []
    for i in range(4):
        path = base / f"person{i}"
        assert main(["synth", str(path), "--frames", "2", "--size", "64", "--outfit", "tshirt-shorts",
                     "--seed", str(i), "--points", "512"]) == 0
        out.append(path)
    return out


def _batch(subjects, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pointwear", "batch", *map(str, subjects), "--out", str(out),
         "--steps", "fit-outfit,fit-appearance", "--fit-outfit-args", FIT, "--fit-appearance-args", APPEARANCE,
         *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=RAY_ENV)


def _first_attempt(out: Path, names: list[str], proc: subprocess.Popen) -> tuple[str, int]:
    """(subject, worker pid) of the first task seen running."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        for name in names:
            log = out / name / "attempts.log"
            if log.is_file() and log.read_text().strip():
                return name, int(log.read_text().split()[1])
        time.sleep(0.05)
    raise AssertionError(f"no task started; output:\n{proc.communicate()[0] if proc.poll() is not None else ''}")


def test_batch_survives_a_killed_worker_and_skips_finished_subjects(subjects, ray_cluster, tmp_path):
    out = tmp_path / "batch"
    names = [s.name for s in subjects]
    proc = _batch(subjects, out, "--ray", ray_cluster)
    try:
        victim, pid = _first_attempt(out, names, proc)
        assert pid != proc.pid
        os.kill(pid, signal.SIGKILL)                     # a Ray worker dies in the middle of a fit
        output = proc.communicate(timeout=RUN_TIMEOUT)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    summary = json.loads((out / "batch_summary.json").read_text())
    rows = {r["name"]: r for r in summary["subjects"]}
    assert sorted(rows) == sorted(names) and summary["batch"][STATE_DONE] == 4, summary     # each once
    for name in names:
        folder, row = out / name, rows[name]
        assert row["state"] == STATE_DONE and row["steps"] == ["fit-outfit", "fit-appearance"], row
        assert row["marked"] is True                                        # done.json written once, by it
        done = json.loads((folder / "done.json").read_text())
        assert done["pid"] == row["pid"] and done["state"] == STATE_DONE
        assert (folder / "outfit" / "outfit.npz").is_file() and (folder / "appearance" / "appearance.pt").is_file()
        attempts = (folder / "attempts.log").read_text().splitlines()
        assert len(attempts) == (2 if name == victim else 1) == row["attempts"], (name, attempts)
    assert rows[victim]["pid"] != pid                                       # finished by another worker
    with open(out / "batch_summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert sorted(r["name"] for r in table) == sorted(names) and {r["state"] for r in table} == {STATE_DONE}
    # a rerun (without Ray: nothing to do) skips every finished subject and keeps their markers
    before = {n: (out / n / "done.json").read_bytes() for n in names}
    again = _batch(subjects, out, "--no-ray")
    output = again.communicate(timeout=RUN_TIMEOUT)[0]
    assert again.returncode == 0, output
    rows = json.loads((out / "batch_summary.json").read_text())["subjects"]
    assert [r["state"] for r in rows] == [STATE_SKIPPED] * 4, rows
    assert before == {n: (out / n / "done.json").read_bytes() for n in names}


def test_batch_failure_is_reported_and_does_not_stop_the_others(subjects, tmp_path):
    from pointwear.batch import run_batch
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "subject.json").write_text("{not json")               # looks like a subject, is not one
    rows = run_batch([str(subjects[0]), str(broken)], tmp_path / "out",       # a local Ray instance
                     BatchOptions(parser=build_parser, steps=("fit-outfit",), cpus=2, step_args={"fit-outfit": FIT.split()}))
    by = {r["name"]: r for r in rows}
    assert by["person0"]["state"] == STATE_DONE
    assert by["broken"]["state"] == STATE_FAILED and "subject.json" in by["broken"]["error"], by["broken"]
    assert (tmp_path / "out" / "broken" / "error.txt").is_file()
    assert not (tmp_path / "out" / "broken" / "done.json").exists()


def test_plan_and_options_checked_before_anything_runs(tmp_path):
    a, b = tmp_path / "a" / "subj", tmp_path / "b" / "subj"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    tasks = plan([str(a), str(b)], tmp_path / "out")
    assert len({t.name for t in tasks}) == 2 and all(t.name.startswith("subj-") for t in tasks)
    assert [t.name for t in plan([str(a), str(b)], tmp_path / "out")] == [t.name for t in tasks]   # stable
    with pytest.raises(FileNotFoundError, match="nope"):
        plan([str(tmp_path / "nope")], tmp_path / "out")
    with pytest.raises(ValueError, match="twice"):
        plan([str(a), str(a)], tmp_path / "out")
    for bad, match in ((BatchOptions(parser=build_parser, steps=("fit",)), "--steps"), (BatchOptions(parser=build_parser, retries=-1), "--retries"),
                       (BatchOptions(parser=build_parser, step_args={"fit-outfit": ["--coarse-stepz", "3"]}), "fit-outfit-args"),
                       (BatchOptions(parser=build_parser, step_args={"fit-outfit": ["--out", "x"]}), "--out")):
        with pytest.raises(ValueError, match=match):
            bad.check()


RYOTA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ryota.png"


@pytest.mark.skipif(not RYOTA.exists(), reason="shared/data/real is not beside the repo")
def test_batch_prepares_a_photo_then_fits_it(tmp_path):
    from pointwear.batch import run_batch
    from pointwear.data.subject import read_subject
    rows = run_batch([str(RYOTA)], tmp_path / "out",
                     BatchOptions(parser=build_parser, steps=("prepare", "fit-outfit"), use_ray=False,
                                  step_args={"prepare": ["--size", "256"], "fit-outfit": FIT.split()}))
    assert [(r["name"], r["state"], r["steps"]) for r in rows] == [("ryota", STATE_DONE, ["prepare", "fit-outfit"])], rows
    folder = tmp_path / "out" / "ryota"
    assert read_subject(folder / "subject").num_frames == 1                 # prepare's subject, then
    assert (folder / "outfit" / "outfit.npz").is_file()                       # fitted from it
    marker = json.loads((folder / "steps" / "fit-outfit.json").read_text())
    assert marker["argv"][:2] == ["fit-outfit", str(folder / "subject")]
