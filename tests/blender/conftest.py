"""Fixtures for the Blender-side tests: the real add-on, built by scripts/build_extension.py, in
the real ``bpy`` module from PyPI.

Importing bpy writes to the user's Blender folders (``~/.config/blender/<ver>/``) and its XDG
cache (``~/.cache/thumbnails/``); installing an extension writes into the ``user_default``
repository. So this file points ``BLENDER_USER_RESOURCES`` and ``XDG_CACHE_HOME`` at a fresh
temporary folder at import time, before any test module here imports bpy, and removes it when the
session ends (the variables stay set for the rest of the pytest session). If another test module
imported bpy first, see ``bpy_module``. The subprocess test always runs, with a fresh user folder
and HOME of its own.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # blender_support, in any import mode
from blender_support import (  # noqa: E402
    ADDON_ID,
    ADDON_MODULE,
    BUILD_SCRIPT,
    REPO,
    REPO_MODULE,
    TimerRecorder,
    handler_snapshot,
    isolate_blender_env,
    repo_index,
    run_backend,
)

if "bpy" not in sys.modules:
    # bpy looks the user folders up lazily, but the bl_ext.<repo> packages take their __path__
    # when bpy is imported: moving the folder afterwards breaks installs, hence "not imported yet".
    USER_RESOURCES = tempfile.mkdtemp(prefix="pointwear-blender-user-")
    atexit.register(shutil.rmtree, USER_RESOURCES, True)
    isolate_blender_env(os.environ, USER_RESOURCES)
else:
    USER_RESOURCES = None


@pytest.fixture(scope="session")
def built_extension(tmp_path_factory):
    """Run scripts/build_extension.py once into temporary folders: (CompletedProcess, zip path)."""
    root = tmp_path_factory.mktemp("extension-build")
    proc = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out-dir", str(root / "dist"),
         "--stage-dir", str(root / "stage")],
        capture_output=True, text=True, timeout=120, cwd=str(REPO),
    )
    lines = proc.stdout.strip().splitlines()
    return proc, (Path(lines[-1]) if lines else None)


@pytest.fixture(scope="session")
def extension_zip(built_extension) -> Path:
    proc, zip_path = built_extension
    if proc.returncode != 0 or zip_path is None or not zip_path.is_file():
        pytest.fail("build_extension.py failed ({}):\n{}\n{}".format(
            proc.returncode, proc.stdout, proc.stderr))
    return zip_path


def _user_repo_dir() -> Path | None:
    """Where bpy (already imported) installs into the user_default repository."""
    repo_pkg = sys.modules.get("bl_ext." + REPO_MODULE)
    return Path(list(repo_pkg.__path__)[0]).resolve() if repo_pkg is not None else None


@pytest.fixture(scope="session")
def bpy_module():
    """bpy, imported in this process with user folders that are not the user's own.

    Normally the temporary folder set above. If bpy was imported before this conftest (by another
    test module), an explicit BLENDER_USER_RESOURCES (scripts/test.sh sets one) is accepted, since
    every install here is uninstalled again; with neither, the in-process tests skip.
    """
    import bpy

    allowed = USER_RESOURCES or os.environ.get("BLENDER_USER_RESOURCES")
    repo_dir = _user_repo_dir()
    if not allowed or repo_dir is None or not repo_dir.is_relative_to(Path(allowed).resolve()):
        pytest.skip("bpy was imported before tests/blender/conftest.py could isolate its user "
                    "folders, and its {} repository ({}) is not under a BLENDER_USER_RESOURCES "
                    "folder: not installing there; test_lifecycle_in_fresh_process_keeps_home_clean "
                    "covers install/uninstall instead".format(REPO_MODULE, repo_dir))
    return bpy


@pytest.fixture
def bpy_clean(bpy_module):
    """bpy with factory settings and an empty scene."""
    bpy_module.ops.wm.read_factory_settings(use_empty=True)
    return bpy_module


@pytest.fixture
def installed_addon(bpy_clean, extension_zip):
    """The built zip installed into user_default and enabled; uninstalled afterwards in any case.

    Yields a dict: ``bpy``, ``handlers_before`` (snapshot taken before the install) and ``timers``
    (a TimerRecorder active from before the install until after the uninstall).
    """
    import addon_utils

    bpy = bpy_clean
    assert not addon_utils.check(ADDON_MODULE)[1], "add-on left enabled by an earlier test"
    handlers_before = handler_snapshot(bpy)
    with TimerRecorder(bpy) as timers:
        result = bpy.ops.extensions.package_install_files(
            filepath=str(extension_zip), repo=REPO_MODULE, enable_on_install=True)
        assert result == {"FINISHED"}, result
        try:
            yield {"bpy": bpy, "handlers_before": handlers_before, "timers": timers}
        finally:
            bpy.ops.extensions.package_uninstall(repo_index=repo_index(bpy), pkg_id=ADDON_ID)
    assert not addon_utils.check(ADDON_MODULE)[1]
    assert not (_user_repo_dir() / ADDON_ID).exists()


@pytest.fixture(scope="session")
def fit_result(tmp_path_factory) -> Path:
    """A tiny fit result folder (outfit.npz with faces, body.npz, posed.npz), made by the real
    backend CLI in a child process: a 3-frame synthetic subject and a 2+2-step parametric fit."""
    root = tmp_path_factory.mktemp("fit-result")
    run_backend("synth", root / "subject", "--frames", 3, "--size", 96, "--outfit", "tshirt-shorts",
                "--seed", 1, "--points", 2048)
    run_backend("fit-outfit", root / "subject", "--out", root / "result", "--template", "tshirt-shorts",
                "--codes", 1, "--coarse-steps", 2, "--fine-steps", 2)
    return root / "result"
