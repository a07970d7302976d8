#!/usr/bin/env python3
"""Build the Pointwear Blender extension zip with Blender's own extension CLI.

Stages ``blender_manifest.toml`` (repository root), the contents of ``addon/`` and the backend wheel
with its pinned requirements (``backend_wheel/``, made by scripts/build_wheel.py: the add-on's
"Install Backend" installs it) into one folder (default ``build/extension/``, wiped first), checks
that the manifest's version is the product's one version (``VERSION`` in addon/link/protocol.py),
runs

    <python> blender_ext.py build --source-dir STAGE --output-dir OUT --valid-tags TAGS
    <python> blender_ext.py validate --valid-tags TAGS ZIP

with ``blender_ext.py`` taken from the installed ``bpy`` wheel
(``bpy/<version>/scripts/addons_core/bl_pkg/cli/blender_ext.py``; bpy itself is not imported) and
``TAGS`` Blender's list of extension tags from the same wheel, so tags are checked as ``blender
--command extension build`` checks them. Prints the zip path on success; on failure exits
non-zero after printing the CLI's messages.

Usage: python scripts/build_extension.py [--out-dir dist] [--stage-dir build/extension]
                                          [--python PYTHON] [--blender-ext PATH]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_wheel  # noqa: E402  (scripts/build_wheel.py)

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "blender_manifest.toml"
ADDON_DIR = "addon"
WHEEL_DIR = "backend_wheel"   # in the extension: the backend wheel and its requirements file
# Never staged even if present in addon/ (the manifest's paths_exclude_pattern excludes them too).
_STAGE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*", "*.zip")


class BuildError(Exception):
    pass


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", os.path.basename(path)))


def find_bpy_root() -> Path:
    """The installed bpy package folder, found without importing bpy."""
    spec = importlib.util.find_spec("bpy")
    if spec is None:
        raise BuildError("bpy is not installed in this Python ({}); pass --blender-ext".format(sys.executable))
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin:
        return Path(spec.origin).parent
    raise BuildError("cannot locate the bpy package folder (spec {!r})".format(spec))


def find_blender_ext(bpy_root: Path | None = None) -> Path:
    """``bpy/<version>/scripts/addons_core/bl_pkg/cli/blender_ext.py`` from the newest version folder."""
    bpy_root = bpy_root or find_bpy_root()
    pattern = str(bpy_root / "*" / "scripts" / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py")
    found = sorted(glob.glob(pattern), key=lambda p: _version_key(Path(p).parents[4].name))
    if not found:
        raise BuildError("Blender's extension CLI not found: no match for " + pattern)
    return Path(found[-1])


def find_valid_tags(blender_ext: Path) -> Path | None:
    """Blender's tag list next to the CLI (``scripts/modules/_bpy_internal/extensions/tags.py``)."""
    scripts = blender_ext.parents[3]
    tags = scripts / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    return tags if tags.is_file() else None


def stage(stage_dir: Path, root: Path = ROOT, python: str = sys.executable) -> Path:
    """Wipe ``stage_dir`` and fill it with the manifest, the contents of addon/ and the backend
    wheel (``WHEEL_DIR``)."""
    manifest = root / MANIFEST
    addon = root / ADDON_DIR
    if not manifest.is_file():
        raise BuildError("manifest not found: {}".format(manifest))
    if not (addon / "__init__.py").is_file():
        raise BuildError("add-on package not found: {}".format(addon / "__init__.py"))
    stage_dir = stage_dir.resolve()
    if stage_dir in (root.resolve(), addon.resolve()) or root.resolve().is_relative_to(stage_dir):
        raise BuildError("refusing to wipe {} (it holds the sources)".format(stage_dir))
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    shutil.copytree(addon, stage_dir, ignore=_STAGE_IGNORE)
    if (stage_dir / MANIFEST).exists():
        raise BuildError("addon/ must not hold its own {} (the root one is used)".format(MANIFEST))
    shutil.copy2(manifest, stage_dir / MANIFEST)
    if (stage_dir / WHEEL_DIR).exists():
        raise BuildError("addon/ must not hold a {}/ folder (the build makes it)".format(WHEEL_DIR))
    try:
        build_wheel.build(stage_dir / WHEEL_DIR, root, python)
    except build_wheel.BuildError as ex:
        raise BuildError("backend wheel: {}".format(ex)) from ex
    return stage_dir


def check_version(manifest: dict, root: Path = ROOT) -> str:
    """The manifest's version, which must be the product's one version (addon/link/protocol.py)."""
    want = build_wheel.product_version(root)
    have = manifest.get("version")
    if have != want:
        raise BuildError("{} says version {!r} but addon/link/protocol.py says VERSION = {!r}: "
                         "set both to the same version".format(MANIFEST, have, want))
    return want


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise BuildError("{} failed (exit {}):\n  $ {}\n{}".format(
            what, proc.returncode, " ".join(cmd), out or "(no output)"))
    return out


def build(out_dir: Path, stage_dir: Path, python: str, blender_ext: Path | None = None,
          verbose: bool = False) -> Path:
    """Stage, build and validate; returns the zip path."""
    blender_ext = blender_ext or find_blender_ext()
    tags = find_valid_tags(blender_ext)
    tag_args = ["--valid-tags", str(tags)] if tags else []
    with open(ROOT / MANIFEST, "rb") as fh:
        manifest = tomllib.load(fh)
    check_version(manifest)
    staged = stage(stage_dir, python=sys.executable)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / "{}-{}.zip".format(manifest.get("id", "pointwear"), manifest.get("version", "0"))
    if zip_path.exists():
        zip_path.unlink()
    # The CLI names the zip {id}-{version}.zip inside --output-dir.
    out = _run([python, str(blender_ext), "build", "--source-dir", str(staged),
                "--output-dir", str(out_dir), *tag_args], "extension build")
    if verbose and out:
        print(out, file=sys.stderr)
    if not zip_path.is_file():
        raise BuildError("extension build reported success but wrote no {}:\n{}".format(zip_path, out))
    out = _run([python, str(blender_ext), "validate", *tag_args, str(zip_path)], "extension validate")
    if verbose and out:
        print(out, file=sys.stderr)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "dist",
                        help="where the zip goes (default: dist/)")
    parser.add_argument("--stage-dir", type=Path, default=ROOT / "build" / "extension",
                        help="staging folder, wiped first (default: build/extension/)")
    parser.add_argument("--python", default=sys.executable,
                        help="Python that runs Blender's CLI (default: this one)")
    parser.add_argument("--blender-ext", type=Path, default=None,
                        help="path to blender_ext.py (default: from the installed bpy wheel)")
    parser.add_argument("-v", "--verbose", action="store_true", help="echo the CLI's messages")
    args = parser.parse_args(argv)
    try:
        zip_path = build(args.out_dir, args.stage_dir, args.python, args.blender_ext, args.verbose)
    except BuildError as ex:
        print("build_extension: " + str(ex), file=sys.stderr)
        return 1
    print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
