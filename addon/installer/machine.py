# SPDX-License-Identifier: GPL-3.0-or-later
"""Facts about this machine the install needs: an NVIDIA driver (which torch build), a Python 3.11
that can make virtual environments, and pip's torch index. Pure standard library: no bpy."""

import json
import os
import subprocess
import sys

from ..link.gpu import nvidia_driver  # noqa: F401  (re-exported: the installer's machine facts)
from ..link.launcher import child_env

REQUIRED_PYTHON = (3, 11)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Windows wheels on PyPI are CPU-only; CUDA ones come from PyTorch's own index. Linux wheels on
# PyPI already carry CUDA; macOS has no CUDA.
TORCH_CUDA_INDEX_WINDOWS = "https://download.pytorch.org/whl/cu128"

CPU = "cpu"
CUDA = "cuda"


def torch_build(choice, driver):
    """``cpu`` or ``cuda`` for the preference ``choice`` (AUTO/CPU/CUDA) and a found ``driver``."""
    choice = (choice or "AUTO").upper()
    if choice in ("CPU", "CUDA"):
        return choice.lower()
    return CUDA if driver else CPU


def torch_index(build, override="", platform=sys.platform):
    """The ``--index-url`` for torch, or "" for pip's own index (its configuration applies)."""
    if override.strip():
        return override.strip()
    if build == CPU and platform.startswith(("linux", "win")):
        return TORCH_CPU_INDEX
    if build == CUDA and platform == "win32":
        return TORCH_CUDA_INDEX_WINDOWS
    return ""


_PROBE = ("import json, sys\n"
          "ok = True\n"
          "try:\n    import venv, ensurepip\nexcept ImportError:\n    ok = False\n"
          "print(json.dumps({'version': list(sys.version_info[:3]), 'venv': ok,"
          " 'executable': sys.executable}))\n")


def probe_python(python, timeout=60.0):
    """(ok, message) for a Python that should make the backend's environment: it must run, be
    3.11 and have ``venv`` and ``ensurepip``."""
    if not python:
        return False, "No Python is set"
    if not os.path.isfile(python):
        return False, "Python not found: {}".format(python)
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                             timeout=timeout, env=child_env())
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return False, "{} does not run as Python".format(python)
    have = tuple(info["version"][:2])
    if have != REQUIRED_PYTHON:
        return False, "{} is Python {}.{}; the backend needs {}.{}".format(
            python, have[0], have[1], *REQUIRED_PYTHON)
    if not info["venv"]:
        return False, "{} cannot make virtual environments (no venv/ensurepip)".format(python)
    return True, "Python {} at {}".format(".".join(map(str, info["version"])), python)
