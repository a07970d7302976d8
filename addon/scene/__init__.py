# SPDX-License-Identifier: GPL-3.0-or-later
"""Scene builders (bpy): the SMPL armature, the body, the clothing points and garment mesh, the
subject's camera, bulk motion keying, and the importer that puts them together.

Data arrives through :mod:`..io` (pure numpy, SMPL space, checked); the SMPL Y-up -> Blender
Z-up change of axes is applied here, once, as geometry enters Blender. The public entry points
are in :mod:`.importer`: ``import_result``, ``load_motion`` and ``apply_redrape``.
"""
