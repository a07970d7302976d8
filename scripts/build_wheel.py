#!/usr/bin/env python3
"""Build the backend wheel ``pointwear-<version>-py3-none-any.whl`` and its pinned requirements.

The sources (pyproject.toml, README.md, backend/, addon/link/) are copied to a temporary folder and
built there with ``pip wheel --no-deps --no-build-isolation --no-index`` (setuptools from this
Python; nothing is downloaded; the repository gets no ``build/`` or ``*.egg-info``). The wheel is
then checked: its version is the product's one version (``VERSION`` in addon/link/protocol.py)
and it holds every package-data file pyproject.toml declares (default body, drape weights, pose
prior, ...), so an install never lacks a data file the repository has.

Next to the wheel goes ``pointwear-<version>-requirements.txt``: the runtime pins of
scripts/requirements.txt (every line but the test-only ones, :data:`DEV_ONLY`). The add-on's
"Install Backend" installs exactly these (torch first, from the index fitting the machine).

Prints the wheel's path. Usage: python scripts/build_wheel.py [--out-dir dist] [--root REPO]
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lines of scripts/requirements.txt that are for development only (not the artist's backend).
DEV_ONLY = ("pytest", "hypothesis", "bpy", "pytorch-msssim")
# What the build needs from a source tree (relative to its root).
SOURCES = ("pyproject.toml", "README.md", "backend", "addon/link")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info", ".*")


class BuildError(Exception):
    pass


def product_version(root: Path = ROOT) -> str:
    """``VERSION`` of addon/link/protocol.py, read without importing it."""
    path = root / "addon" / "link" / "protocol.py"
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "VERSION"):
            return ast.literal_eval(node.value)
    raise BuildError("no VERSION = \"...\" in {}".format(path))


def wheel_name(version: str) -> str:
    return "pointwear-{}-py3-none-any.whl".format(version)


def requirements_name(version: str) -> str:
    return "pointwear-{}-requirements.txt".format(version)


def runtime_pins(root: Path = ROOT) -> list[str]:
    """The ``name==version`` lines of scripts/requirements.txt that the backend needs at run time."""
    pins = []
    for raw in (root / "scripts" / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line:
            raise BuildError("scripts/requirements.txt: not pinned with ==: {!r}".format(line))
        if line.split("==", 1)[0].strip().lower() not in DEV_ONLY:
            pins.append(line)
    if not any(p.startswith("torch==") for p in pins):
        raise BuildError("scripts/requirements.txt pins no torch==")
    return pins


def expected_data_files(root: Path = ROOT) -> list[str]:
    """Wheel paths of the package-data files pyproject.toml declares that exist in the sources."""
    with open(root / "pyproject.toml", "rb") as fh:
        tool = tomllib.load(fh)["tool"]["setuptools"]
    package_dir = tool.get("package-dir", {})
    found = []
    for package, patterns in tool.get("package-data", {}).items():
        folder = root / _package_folder(package, package_dir)
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns):
                found.append(package.replace(".", "/") + "/" + path.name)
    return found


def _package_folder(package: str, package_dir: dict) -> str:
    """The source folder of a dotted package under setuptools' package-dir mapping."""
    parts = package.split(".")
    for n in range(len(parts), -1, -1):
        key = ".".join(parts[:n])
        if key in package_dir:
            base = package_dir[key]
            return "/".join(p for p in [base, *parts[n:]] if p)
    return "/".join(parts)


MIN_SETUPTOOLS = (77,)   # `license` as an SPDX string (pyproject.toml)


def check_setuptools(python: str) -> None:
    """BuildError unless ``python`` has a setuptools that builds pyproject.toml (no isolation:
    nothing is downloaded)."""
    proc = subprocess.run([python, "-c", "import setuptools; print(setuptools.__version__)"],
                          capture_output=True, text=True)
    version = proc.stdout.strip()
    numbers = tuple(int(x) for x in version.split(".")[:1] if x.isdigit())
    if proc.returncode != 0 or numbers < MIN_SETUPTOOLS:
        raise BuildError("{} has setuptools {}; the wheel needs setuptools>={}: pip install "
                         "'setuptools>={}' there, or pass --python".format(
                             python, version or "(none)", MIN_SETUPTOOLS[0], MIN_SETUPTOOLS[0]))


def build(out_dir: Path, root: Path = ROOT, python: str = sys.executable) -> Path:
    """Build and check the wheel in ``out_dir`` (an older wheel of the same name is replaced)."""
    version = product_version(root)
    check_setuptools(python)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel_name(version)
    with tempfile.TemporaryDirectory(prefix="pointwear-wheel-") as tmp:
        src, dest = Path(tmp) / "src", Path(tmp) / "out"
        for rel in SOURCES:
            path = root / rel
            if path.is_dir():
                shutil.copytree(path, src / rel, ignore=_IGNORE)
            elif path.is_file():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / rel)
            else:
                raise BuildError("missing source {}".format(path))
        cmd = [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--quiet", "--wheel-dir", str(dest), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError("pip wheel failed (exit {}):\n{}".format(
                proc.returncode, (proc.stdout + proc.stderr).strip()))
        built = dest / wheel_name(version)
        if not built.is_file():
            raise BuildError("pip wheel wrote {} instead of {}".format(
                sorted(p.name for p in dest.iterdir()), built.name))
        check_wheel(built, root)
        shutil.copy2(built, target)
    (out_dir / requirements_name(version)).write_text(
        "# Runtime pins of pointwear {} (from scripts/requirements.txt)\n".format(version)
        + "\n".join(runtime_pins(root)) + "\n")
    return target


def check_wheel(wheel: Path, root: Path = ROOT) -> None:
    """BuildError unless the wheel holds the protocol module and every declared data file."""
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = ["pointwear/__init__.py", "pointwear/link/protocol.py", *expected_data_files(root)]
    missing = [n for n in needed if n not in names]
    if missing:
        raise BuildError("{} lacks {}".format(wheel.name, ", ".join(missing)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "dist", help="default: dist/")
    parser.add_argument("--root", type=Path, default=ROOT, help="source tree (default: this repository)")
    parser.add_argument("--python", default=sys.executable, help="Python with pip and setuptools")
    args = parser.parse_args(argv)
    try:
        wheel = build(args.out_dir, args.root.resolve(), args.python)
    except (BuildError, OSError) as ex:
        print("build_wheel: " + str(ex), file=sys.stderr)
        return 1
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
