# SPDX-License-Identifier: GPL-3.0-or-later
"""Is there an NVIDIA driver on this machine? Pure standard library: used by the add-on's installer
(which torch build to install) and by the backend's ``pointwear doctor`` (as ``pointwear.link.gpu``)."""

import re
import shutil
import subprocess

NVIDIA_PROC = "/proc/driver/nvidia/version"


def nvidia_driver(proc_path=NVIDIA_PROC, smi="nvidia-smi", timeout=10.0):
    """The NVIDIA driver version found on this machine, or "" when there is none.

    Asks ``nvidia-smi`` first (Windows and Linux), else reads ``/proc/driver/nvidia/version``."""
    exe = shutil.which(smi)
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=timeout)
            first = (out.stdout or "").strip().splitlines()
            if out.returncode == 0 and first and first[0].strip():
                return first[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open(proc_path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return ""
    found = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", text)
    return found.group(1) if found else ("unknown version" if text.strip() else "")
