"""clothsim: garments from sewing patterns draped on the default body by Blender's cloth
simulator and rendered by Cycles, written as subjects (scripts/make_clothsim_set.py;
docs/clothsim.md). `patterns` and `plan` are plain numpy; only `blender_sim` imports bpy."""
