#!/usr/bin/env python3
"""Acceptance check of an artist's install, end to end, in a fresh bpy: build the extension zip,
install only that zip in a bpy with empty user folders (and its own HOME), press Install Backend
(Offline, from a local wheelhouse: nothing shared with any other environment), Start Backend, make
a synthetic subject and fit it through the add-on, Run Diagnostics, stop. Prints each step and its
outcome; exits non-zero when one fails. Takes a few minutes (a whole PyTorch install).

The wheelhouse: a folder of the pinned wheels (docs/install.md, "For studios"). The bpy Python:
any Python with the bpy module and no backend (e.g. .venv-bpy5/bin/python).

Usage: python scripts/fresh_install_check.py --wheelhouse DIR [--bpy-python PYTHON] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEPS = """
    import sys, time, bpy
    zip_path, wheelhouse, work = sys.argv[-3:]
    mod = "bl_ext.user_default.pointwear"
    t0 = time.time()

    def step(name, result, ok):
        print("STEP {:<20} {:>5.0f} s  {}  {}".format(name, time.time() - t0,
              "ok" if ok else "FAILED", result), flush=True)
        if not ok:
            sys.exit(1)

    r = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                 enable_on_install=True)
    step("install extension", r, r == {"FINISHED"})
    prefs = bpy.context.preferences.addons[mod].preferences
    prefs.wheel_folder, prefs.offline, prefs.work_folder, prefs.device = wheelhouse, True, work, "CPU"
    r = bpy.ops.pointwear.install_backend()
    step("Install Backend", r, r == {"FINISHED"})
    r = bpy.ops.pointwear.start_backend()
    step("Start Backend", r, r == {"FINISHED"})
    rt = sys.modules[mod + ".operators.runtime"]
    job = rt.submit(bpy.context, "synth", {"frames": 3, "size": 96, "outfit": "tshirt-shorts",
                                          "points": 2048, "sheet": False})
    r = rt.wait_job(bpy.context, job, timeout=900, echo=False)
    step("synthetic subject", r, r[0])
    p = bpy.context.scene.pointwear
    p.subject_folder = job.files["subject"]
    p.fit_template, p.fit_codes, p.fit_coarse_steps, p.fit_fine_steps = "TSHIRT_SHORTS", 1, 10, 10
    r = bpy.ops.pointwear.fit_outfit()
    names = sorted(o.name for o in bpy.context.scene.objects if o.get("pointwear_kind"))
    step("Fit Outfit", (r, names), r == {"FINISHED"} and len(names) >= 3)
    r = bpy.ops.pointwear.run_diagnostics()
    report = sys.modules[mod + ".operators.install"].last_doctor_report()
    bad = [(c["name"], c["detail"]) for c in report["checks"] if c["status"] == "fail"]
    step("Run Diagnostics", bad or "all {} checks pass".format(len(report["checks"])), not bad)
    r = bpy.ops.pointwear.stop_backend()
    step("Stop Backend", r, r == {"FINISHED"})
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheelhouse", type=Path, required=True)
    parser.add_argument("--bpy-python", default=str(ROOT / ".venv-bpy5" / "bin" / "python"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pointwear-fresh-install-"))
    try:
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_extension.py"),
                              "--out-dir", str(tmp / "dist"), "--stage-dir", str(tmp / "stage")],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        zip_path = out.stdout.strip().splitlines()[-1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BLENDER_USER_", "PYTHON"))}
        env.update(BLENDER_USER_RESOURCES=str(tmp / "user"), XDG_CACHE_HOME=str(tmp / "user" / "xdg"),
                   HOME=str(tmp / "home"))
        (tmp / "home").mkdir()
        proc = subprocess.run([args.bpy_python, "-c", textwrap.dedent(STEPS), zip_path,
                               str(args.wheelhouse.resolve()), str(tmp / "work")],
                              capture_output=True, text=True, env=env, cwd=str(tmp))
        steps = [ln for ln in proc.stdout.splitlines() if ln.startswith("STEP ")]
        print("\n".join(steps))
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            return 1
        return 0
    finally:
        if args.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
