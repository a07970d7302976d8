"""`pointwear batch`: prepare, fit-outfit and fit-appearance over many subjects on Ray.

One Ray task per subject (its CPUs and GPUs from `BatchOptions`), running the command line's own
steps (`pointwear prepare / fit-outfit / fit-appearance`, called through `cli.build_parser`, so a
batch step is exactly the command). Every subject gets a folder `OUT/<name>/`:

    subject/         the prepared subject (when the input is a video or images; a subject folder
                     given as input is used where it is)
    outfit/          fit-outfit result (resumes from its checkpoint)
    appearance/      fit-appearance result (resumes from its checkpoint)
    steps/<step>.json  written atomically once a step's outputs are complete
    attempts.log     one line per attempt (host, pid, time): a retried task shows two
    done.json        written atomically (and only once: os.link) after every step: a subject
                     with it is skipped on a rerun
    error.txt        the traceback when a step failed

A worker that dies (killed, out of memory, a lost node) is retried by Ray up to `retries` times;
the retry skips the steps already marked done and resumes the running one from its checkpoint.
A step that fails with an error is not retried: the subject is `failed` in the summary and the
batch goes on. `OUT/batch_summary.csv` and `.json` list every subject once."""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shlex
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .link import protocol as P

STEPS = ("prepare", "fit-outfit", "fit-appearance")
STEP_DIRS = {"fit-outfit": "outfit", "fit-appearance": "appearance"}
DONE_FILE, SUMMARY = "done.json", "batch_summary"
MAX_SUBJECTS = 10000
# A subject's outcome: the protocol's job states, plus "skipped" (finished by an earlier run).
STATE_DONE, STATE_SKIPPED, STATE_FAILED = P.STATE_DONE, "skipped", P.FAILED


@dataclass
class BatchOptions:
    """What `pointwear batch` runs and with what: the tuning numbers of a batch in one place."""
    steps: tuple[str, ...] = STEPS
    ray_address: str | None = None       # None: a local Ray instance with `cpus` CPUs
    cpus: int = 2                        # local instance only
    gpus: int = 0                        # local instance only
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    retries: int = 3                     # times a task is run again after its worker died
    use_ray: bool = True                 # False: a plain loop in this process (for comparison)
    step_args: dict[str, list[str]] = field(default_factory=dict)   # extra command-line args per step
    # The command line's parser (`pointwear.cli.build_parser`, given by the CLI: a module-level
    # function, so Ray ships it by reference and this module never imports the CLI).
    parser: Callable[[], argparse.ArgumentParser] | None = None

    def check(self) -> None:
        """ValueError naming the option when something cannot work."""
        if self.parser is None:
            raise ValueError("BatchOptions.parser: give the command line's parser (pointwear.cli.build_parser)")
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown or not self.steps:
            raise ValueError(f"--steps: unknown step(s) {unknown or '(none)'}; steps: {','.join(STEPS)}")
        for name, lo, value in (("--cpus", 1, self.cpus), ("--gpus", 0, self.gpus), ("--retries", 0, self.retries)):
            if value < lo:
                raise ValueError(f"{name} must be >= {lo}, got {value}")
        if self.cpus_per_task <= 0 or self.gpus_per_task < 0:
            raise ValueError("--cpus-per-task must be > 0 and --gpus-per-task >= 0")
        for step, args in self.step_args.items():
            if "--out" in args or "--outfit" in args:
                raise ValueError(f"--{step}-args: --out/--outfit are set by the batch (OUT/<name>/...)")
            _step_argv(self.parser, step, Path("/in"), Path("/out"), args)   # parses them now: a typo fails here


@dataclass
class Task:
    """One subject: its input and its folder under OUT."""
    name: str
    input: str
    folder: str


def plan(inputs: list[str], out: Path) -> list[Task]:
    """A folder name per input: its own name, made unique with a hash of its path when two
    inputs share a name (the same inputs give the same names on every run)."""
    if not inputs:
        raise ValueError("no subjects given")
    if len(inputs) > MAX_SUBJECTS:
        raise ValueError(f"{len(inputs)} subjects, at most {MAX_SUBJECTS} per batch")
    paths = [Path(p).expanduser().resolve() for p in inputs]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"no such subject or input: {p}")
    if len(set(paths)) != len(paths):
        raise ValueError("a subject is given twice")
    names = [p.stem if p.is_file() else p.name for p in paths]
    tasks = []
    for p, name in zip(paths, names):
        if names.count(name) > 1:
            name = f"{name}-{hashlib.sha256(str(p).encode()).hexdigest()[:6]}"
        tasks.append(Task(name, str(p), str(Path(out).resolve() / name)))
    return tasks


def _step_argv(build_parser: Callable[[], argparse.ArgumentParser], step: str, subject: Path, folder: Path,
               extra: list[str]) -> list[str]:
    """The command line of one step, as a person would type it; parsed by the real parser."""
    if step == "prepare":
        argv = ["prepare", str(subject), "--out", str(folder / "subject")]
    elif step == "fit-outfit":
        argv = ["fit-outfit", str(subject), "--out", str(folder / "outfit")]
    else:
        argv = ["fit-appearance", str(subject), "--outfit", str(folder / "outfit"), "--out",
                str(folder / "appearance")]
    argv += list(extra)
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        raise ValueError(f"--{step}-args: not valid for pointwear {step}: {shlex.join(extra)}") from None
    return argv


def _is_subject(path: Path) -> bool:
    from .data.subject import SUBJECT_JSON
    return path.is_dir() and (path / SUBJECT_JSON).is_file()


def _write_once(path: Path, data: dict) -> bool:
    """Write JSON to `path` atomically and only if it is not there (False if it was)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _save_json(path: Path, data: dict) -> None:
    from .fileio import save_text
    save_text(path, json.dumps(data, indent=1))


def run_subject(task: Task, options: BatchOptions) -> dict:
    """Run the steps of one subject (in a Ray worker, or in this process); its outcome row.
    Steps marked done are skipped, so a retried task goes on where the dead one stopped."""
    folder = Path(task.folder)
    (folder / "steps").mkdir(parents=True, exist_ok=True)
    with open(folder / "attempts.log", "a") as fh:
        fh.write(f"{socket.gethostname()} {os.getpid()} {time.time():.3f}\n")
        fh.flush()
        os.fsync(fh.fileno())
    attempts = len((folder / "attempts.log").read_text().splitlines())
    start = time.time()
    row = {"name": task.name, "input": task.input, "folder": task.folder, "attempts": attempts,
           "host": socket.gethostname(), "pid": os.getpid(), "steps": [], "error": ""}
    try:
        import torch
        torch.set_num_threads(max(1, int(options.cpus_per_task)))
        subject = Path(task.input)
        for step in STEPS:
            if step not in options.steps:
                continue
            if step == "prepare" and _is_subject(subject):
                continue     # the input is a subject already
            marker = folder / "steps" / f"{step}.json"
            if not marker.is_file():
                argv = _step_argv(options.parser, step, subject, folder, options.step_args.get(step, []))
                _run_step(options.parser, argv)
                _save_json(marker, {"argv": argv, "seconds": round(time.time() - start, 3)})
            row["steps"].append(step)
            if step == "prepare":
                subject = folder / "subject"
        # A retry of a worker that died just after this line finds the marker: done all the same.
        row["marked"] = _write_once(folder / DONE_FILE, {**row, "state": STATE_DONE, "finished": time.time(),
                                                         "seconds": round(time.time() - start, 3)})
        row["state"] = STATE_DONE
    except Exception as exc:
        (folder / "error.txt").write_text(traceback.format_exc())
        row["state"], row["error"] = STATE_FAILED, f"{type(exc).__name__}: {exc}"[:2000]
    row["seconds"] = round(time.time() - start, 3)
    return row


def _run_step(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str]) -> None:
    """One step through the command line's own function; its printout goes to this worker's
    log. A non-zero exit is an error naming the step."""
    args = build_parser().parse_args(argv)
    code = args.func(args)
    if code:
        raise RuntimeError(f"pointwear {argv[0]} exited with {code}")


class _Progress:
    """A tqdm bar on a terminal, else one line per finished subject on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.count = total, 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="batch", unit="subject")

    def __call__(self, row: dict) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{row['name']}: {row['state']}")
        else:
            print(f"batch: {self.count}/{self.total} {row['name']}: {row['state']}"
                  f"{' - ' + row['error'] if row.get('error') else ''} ({row.get('seconds', 0):.1f} s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_batch(inputs: list[str], out: str | Path, options: BatchOptions) -> list[dict]:
    """Run every subject not done yet; write the summary (CSV and JSON) in `out`; the rows."""
    options.check()
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    tasks = plan(inputs, out)
    rows, todo = {}, []
    for t in tasks:
        done = Path(t.folder) / DONE_FILE
        if done.is_file():
            before = json.loads(done.read_text())
            rows[t.name] = {**before, "state": STATE_SKIPPED, "error": "done in an earlier run"}
        else:
            todo.append(t)
    progress = _Progress(len(todo))
    started = time.time()
    try:
        results = _run_ray(todo, options, progress) if options.use_ray and todo else \
            _run_loop(todo, options, progress)
    finally:
        progress.close()
    rows.update((r["name"], r) for r in results)
    ordered = [rows[t.name] for t in tasks]
    write_summary(out, ordered, time.time() - started, options)
    return ordered


def _run_loop(tasks: list[Task], options: BatchOptions, progress) -> list[dict]:
    rows = []
    for t in tasks:
        rows.append(run_subject(t, options))
        progress(rows[-1])
    return rows


def _run_ray(tasks: list[Task], options: BatchOptions, progress) -> list[dict]:
    import ray
    started_here = not ray.is_initialized()
    if started_here:
        if options.ray_address:
            ray.init(address=options.ray_address, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(num_cpus=options.cpus, num_gpus=options.gpus, include_dashboard=False,
                     logging_level="WARNING", log_to_driver=False)
    try:
        remote = ray.remote(run_subject).options(num_cpus=options.cpus_per_task, num_gpus=options.gpus_per_task,
                                                 max_retries=options.retries, retry_exceptions=False)
        pending = {remote.remote(t, options): t for t in tasks}
        rows = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except Exception as exc:   # the worker died more often than retries allow, a lost node, ...
                row = {"name": task.name, "input": task.input, "folder": task.folder, "state": STATE_FAILED,
                       "steps": [], "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:500]}",
                       "attempts": options.retries + 1, "seconds": 0.0}
            rows.append(row)
            progress(row)
        return rows
    finally:
        if started_here:
            ray.shutdown()


COLUMNS = ("name", "state", "steps", "attempts", "seconds", "host", "pid", "folder", "input", "error")


def write_summary(out: Path, rows: list[dict], seconds: float, options: BatchOptions) -> tuple[Path, Path]:
    """OUT/batch_summary.json (rows + totals) and OUT/batch_summary.csv (one row per subject),
    both atomic."""
    from .fileio import atomic_path
    counts = {s: sum(r["state"] == s for r in rows) for s in (STATE_DONE, STATE_SKIPPED, STATE_FAILED)}
    meta = {"seconds": round(seconds, 3), "subjects": len(rows), **counts,
            "options": {**{k: v for k, v in asdict(options).items() if k != "parser"}, "steps": list(options.steps)}}
    json_path, csv_path = out / f"{SUMMARY}.json", out / f"{SUMMARY}.csv"
    _save_json(json_path, {"batch": meta, "subjects": rows})
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "steps": "+".join(r.get("steps") or [])})
    return json_path, csv_path


def format_table(rows: list[dict]) -> str:
    """The summary as a text table for the terminal."""
    lines = [f"{'subject':24s} {'state':8s} {'tries':>5s} {'seconds':>8s}  steps / error"]
    for r in rows:
        tail = r.get("error") if r["state"] == STATE_FAILED else "+".join(r.get("steps") or [])
        lines.append(f"{r['name'][:24]:24s} {r['state']:8s} {r.get('attempts', 0):5d} "
                     f"{float(r.get('seconds') or 0):8.1f}  {tail}")
    return "\n".join(lines)
