"""UV atlases by xatlas: charts cut, flattened and packed into one texture; vertices are split
along the seams so that each vertex has one UV (what glTF, OBJ and Blender need)."""
from __future__ import annotations

import numpy as np

from .options import DEFAULT_OPTIONS, MeshOptions
from .result_mesh import GarmentMesh


def uv_atlas(mesh: GarmentMesh, options: MeshOptions = DEFAULT_OPTIONS) -> tuple[GarmentMesh, np.ndarray]:
    """The mesh with UVs (V', 2) in [0, 1] (bottom-left origin) and its vertices split along the
    seams, plus `source` (V',) int: the original vertex of each new one."""
    import xatlas
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(mesh.vertices, np.float32), np.ascontiguousarray(mesh.faces, np.uint32))
    chart = xatlas.ChartOptions()
    pack = xatlas.PackOptions()
    pack.resolution = int(options.texture_size)
    pack.padding = int(options.atlas_padding_px)
    pack.bilinear = True
    pack.blockAlign = True
    atlas.generate(chart, pack)
    vmap, faces, uv = atlas[0]
    vmap = np.asarray(vmap, np.int64)
    out = GarmentMesh(mesh.vertices[vmap], np.asarray(faces, np.int32), mesh.weights[vmap], mesh.garment[vmap],
                      np.clip(np.asarray(uv, np.float32), 0.0, 1.0))
    return out.check("uv atlas"), vmap
