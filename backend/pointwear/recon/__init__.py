"""Single-image clothing reconstruction (after 3D Magic Mirror): one photo -> a textured, lit
garment mesh skinned to the SMPL armature; the per-image refinement and the learned encoder."""
