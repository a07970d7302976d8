"""Renderers in plain PyTorch (CPU or CUDA, same code): the hard mesh rasterizer, the soft
(differentiable silhouette) rasterizer beside it, and point splatting."""
from pointwear.render.rasterizer import (
    Fragments,
    covered_pairs,
    interpolate,
    project,
    rasterize,
)
from pointwear.render.soft import (
    SoftFragments,
    SoftOptions,
    render_textured,
    sample_texture,
    sh_basis,
    sh_shading,
    soft_rasterize,
    soft_silhouette,
    vertex_normals,
)

__all__ = ["Fragments", "covered_pairs", "interpolate", "project", "rasterize", "SoftFragments", "SoftOptions",
           "render_textured", "sample_texture", "sh_basis", "sh_shading", "soft_rasterize", "soft_silhouette", "vertex_normals"]
