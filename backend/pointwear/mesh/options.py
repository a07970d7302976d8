"""The tuning numbers of garment meshes, UV atlases, texture baking and export, in one place."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MeshOptions:
    # -- remeshing a point-only result on the body's connectivity (remesh.py) --
    subdivide: int = 1              # midpoint subdivisions of the body mesh before use (each: 4x faces)
    neighbours: int = 8             # clothing points averaged per body vertex (offset and skin weights)
    smooth_iterations: int = 4     # Laplacian smoothing passes of the offset field over the body mesh
    cover_factor: float = 3.5       # a body vertex is covered by a garment within this x point spacing
    min_stretch: float = 0.3        # faces whose edges shrink below this x the body's are dropped
    max_stretch: float = 3.0        # ... or grow beyond this (points pulled far apart)
    clearance_m: float = 0.003      # every garment vertex at least this far outside the body surface
    majority_passes: int = 3        # faces kept or dropped by the vote of their neighbours (no pinholes)
    min_component_faces: int = 30   # smaller connected pieces are dropped
    # -- UV atlas (uv.py) --
    texture_size: int = 1024        # side of the baked albedo texture (px)
    atlas_padding_px: int = 4       # gutter between charts
    # -- baking (bake.py) --
    view_size: int = 512            # long side (px) of the neural renders that are back-projected
    max_training_views: int = 16    # training frames used (evenly spaced)
    orbit_views: int = 12           # extra views around the garment (fill what training views miss)
    orbit_elevations: tuple = (0.0, 35.0, -35.0)  # degrees; each orbit elevation gets orbit_views / n views
    depth_tolerance_m: float = 0.01  # a texel is seen when at most this far behind the front surface
    cos_power: float = 2.0          # view weight = cos(normal, view) ** cos_power * predicted mask
    min_weight: float = 0.05        # texels with less total weight in a tier count as unseen there
    mask_threshold: float = 0.5     # neural mask above this is garment


DEFAULT_OPTIONS = MeshOptions()
