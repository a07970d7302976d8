#!/usr/bin/env python3
"""Benchmark: a CPU install of the backend from a local wheelhouse, as "Install Backend" does it
(the add-on's own InstallJob, Offline mode: pip --no-index with only the given folders), and the
size of the extension zip. Writes the "Install" section of docs/benchmarks.md.

The wheelhouse is a folder holding every pinned wheel, made once with
    python -m pip download --only-binary=:all: -d WHEELHOUSE setuptools pip \\
        -r dist/pointwear-<version>-requirements.txt
(scripts/build_wheel.py writes that requirements file; the torch pin must resolve to the CPU wheel:
on Linux add --index-url https://download.pytorch.org/whl/cpu, or use a folder holding it).

Usage: python scripts/bench_install.py --wheelhouse WHEELHOUSE [--no-write] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import benchdoc  # noqa: E402
import build_wheel  # noqa: E402
from addon.installer import job as J  # noqa: E402
from addon.installer import layout as L  # noqa: E402


def disk_usage(path: Path) -> int:
    """Bytes on disk under ``path`` (allocated blocks; hard links and symlinks counted once)."""
    seen, total = set(), 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def build_zip(tmp: Path) -> Path:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_extension.py"),
                          "--out-dir", str(tmp / "dist"), "--stage-dir", str(tmp / "stage")],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheelhouse", type=Path, required=True, help="folder of the pinned wheels")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--keep", action="store_true", help="keep the installed environment")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pointwear-bench-install-"))
    try:
        zip_path = build_zip(tmp)
        wheel = build_wheel.build(tmp / "wheel")
        layout = L.EnvLayout(tmp / "backend")
        options = J.InstallOptions(sys.executable, str(wheel), J.requirements_for(str(wheel)),
                                   torch_build="cpu", find_links=[str(args.wheelhouse), str(wheel.parent)],
                                   offline=True)
        job = J.InstallJob(layout, options)
        start = time.monotonic()
        progress = job.run()
        seconds = time.monotonic() - start
        if progress.state != J.DONE:
            print("install failed: {} ({})".format(progress.message, progress.hint), file=sys.stderr)
            return 1
        env = Path(layout.current_env())
        env_bytes = disk_usage(env)
        house_bytes = sum(p.stat().st_size for p in args.wheelhouse.glob("*.whl"))
        lines = [
            f"Machine: {benchdoc.machine()}; the 2 cores were shared with other jobs, so times "
            "are upper bounds. `python scripts/bench_install.py --wheelhouse DIR` (a folder of "
            "the pinned wheels, docs/install.md), with the add-on's own install code in Offline "
            f"mode from Python {sys.version.split()[0]} (`{sys.executable}` as the base).",
            "",
            "| what | figure |",
            "|---|---|",
            f"| extension zip (add-on + backend wheel) | {zip_path.stat().st_size / 2**20:.1f} MiB |",
            f"| backend wheel alone | {wheel.stat().st_size / 2**20:.1f} MiB |",
            f"| wheelhouse for a CPU install ({len(list(args.wheelhouse.glob('*.whl')))} wheels) "
            f"| {house_bytes / 2**20:.0f} MiB |",
            f"| CPU install, total | {seconds:.0f} s |",
        ]
        lines += [f"| - {name} | {secs:.1f} s |" for name, secs in job.timings]
        lines += [f"| disk of the installed environment | {env_bytes / 2**30:.2f} GiB |",
                  f"| installed | pointwear {job.info['version']}, torch {job.info['torch']} |",
                  "",
                  "Blender's `extension validate` sets no size limit (its CLI, bpy 4.5/5.0, has "
                  "none); the zip is small because torch and the other packages are installed by "
                  "Install Backend, not bundled."]
        benchdoc.publish("Install", lines, write=not args.no_write)
        if args.keep:
            print("kept:", env)
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
