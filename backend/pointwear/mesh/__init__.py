"""Garment meshes as artists use them: the mesh block of a result folder (`result_mesh`), UV
atlases, texture baking and export (glTF binary, OBJ + MTL + PNG, PLY). Pure numpy/torch io:
nothing here imports bpy."""
