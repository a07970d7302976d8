"""`pointwear doctor` on the healthy project environment and on a deliberately broken one: a real
virtual environment holding every package of .venv but trimesh, with a work folder that cannot be
created. Each runs the real CLI as a child process, as the add-on's Diagnostics section does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

EXPECTED = {"python", "package pointwear", "package torch", "package numpy", "package trimesh",
            "package mediapipe", "device", "disk", "memory", "work folder", "blender",
            "mediapipe models", "default body", "drape weights", "pose prior"}


def doctor(python: str, *args, env=None) -> tuple[int, dict, str]:
    proc = subprocess.run([python, "-m", "pointwear", "doctor", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)
    report = json.loads(proc.stdout.strip().splitlines()[-1]) if "--json" in args else {}
    return proc.returncode, report, proc.stdout + proc.stderr


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def test_healthy_environment_passes_every_check_and_leaves_the_work_folder_clean(tmp_path):
    work = tmp_path / "work"
    code, report, out = doctor(sys.executable, "--json", "--work", work, "--blender", "4.5.15")
    checks = by_name(report)
    assert code == 0 and report["ok"] is True, out
    assert EXPECTED | {"smoke test"} <= set(checks), sorted(checks)
    assert all(c["status"] in ("ok", "warn") for c in report["checks"]), out
    assert all(c["fix"] for c in report["checks"] if c["status"] != "ok"), out
    assert report["version"] == checks["package pointwear"]["detail"].split()[1]
    assert "asked by Blender 4.5.15" in checks["blender"]["detail"]
    assert "frame fit on the CPU" in checks["smoke test"]["detail"]
    assert work.is_dir() and list(work.iterdir()) == []  # the write probe is removed again


@pytest.fixture(scope="module")
def broken_python(tmp_path_factory) -> str:
    """A venv (no pip) whose site-packages links every entry of this environment's site-packages
    except trimesh: the pointwear editable install and everything else stay importable."""
    env = tmp_path_factory.mktemp("broken") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    theirs = Path(sysconfig.get_paths()["purelib"])
    ours = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for entry in theirs.iterdir():
        if not entry.name.lower().startswith("trimesh") and not (ours / entry.name).exists():
            (ours / entry.name).symlink_to(entry)
    assert (ours / "torch").exists() and not list(ours.glob("trimesh*"))
    return str(python)


def test_broken_environment_names_the_missing_package_and_the_unwritable_work_folder(
        broken_python, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the work folder's parent should be")
    work = blocker / "work"
    code, report, out = doctor(broken_python, "--json", "--quick", "--work", work)
    checks = by_name(report)
    assert code == 1 and report["ok"] is False, out
    assert EXPECTED <= set(checks), sorted(checks)  # every check still ran
    assert checks["package trimesh"]["status"] == "fail"
    assert "trimesh is not installed" in checks["package trimesh"]["detail"]
    assert "Update Backend" in checks["package trimesh"]["fix"]
    assert checks["work folder"]["status"] == "fail"
    assert str(work) in checks["work folder"]["detail"] and "Work Folder" in checks["work folder"]["fix"]
    # What does not depend on trimesh still passes.
    for name in ("python", "package torch", "device", "disk", "pose prior"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "smoke test" not in checks  # --quick


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_work_folder_fails(tmp_path):
    work = tmp_path / "ro"
    work.mkdir()
    work.chmod(0o500)
    try:
        code, report, out = doctor(sys.executable, "--json", "--quick", "--work", work)
    finally:
        work.chmod(0o700)
    assert code == 1 and by_name(report)["work folder"]["status"] == "fail", out


def test_human_output_lists_failures_with_fixes(broken_python, tmp_path):
    code, _, out = doctor(broken_python, "--quick", "--work", tmp_path / "w")
    assert code == 1
    assert "[FAIL] package trimesh: trimesh is not installed" in out
    assert "fix: Update Backend" in out and "check(s) failed" in out
