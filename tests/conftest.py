"""Shared fixtures: the default body loaded once, and a small synthetic subject per outfit."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
os.environ.setdefault("BLENDER_USER_RESOURCES", str(ROOT / ".venv" / "blender-user"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread for the whole run, as the fitter and trainer use: on shared cores two
    OpenMP threads make the many small ops of these tests many times slower."""
    try:
        import torch
    except ImportError:  # the bpy 5 lane: Blender-side tests only, the backend runs as a child
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def default_body():
    from pointwear.body import load_body
    return load_body("default", device="cpu")


@pytest.fixture(scope="session")
def pointwear_exe() -> str:
    exe = VENV_BIN / "pointwear"
    assert exe.exists(), f"console script missing: {exe}"
    return str(exe)
