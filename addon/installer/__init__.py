# SPDX-License-Identifier: GPL-3.0-or-later
"""The backend's own environment: install, update, remove and check it. Pure standard library: no
bpy (``operators/install.py`` is the Blender side; docs/install.md the user's view).

- :mod:`.layout`  where environments live, which one is current, does it fit this add-on
- :mod:`.machine` NVIDIA driver, torch build and index, a Python that can make venvs
- :mod:`.job`     :class:`InstallJob` (venv + pip, progress, cancel, log, atomic switch) and
  :class:`DoctorJob` (``pointwear doctor --json`` in the installed environment)
"""
