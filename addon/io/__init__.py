# SPDX-License-Identifier: GPL-3.0-or-later
"""Pure logic for the scene builders: numpy and the standard library only, never bpy.

As glTF-Blender-IO keeps ``io/`` apart from ``blender/``, everything here can be tested (and
reasoned about) without Blender: the SMPL maths and the one Y-up -> Z-up conversion
(:mod:`.smpl_math`), readers of the backend's result files (:mod:`.results`), motions
(:mod:`.motion`), the OpenCV -> Blender camera conversion (:mod:`.camera`) and the files written
for the backend's neural render, camera.npz and an AMASS-style motion (:mod:`.export`).
"""
