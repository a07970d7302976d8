"""Renderers in plain PyTorch (CPU or CUDA, same code): the hard mesh rasterizer for now."""
from pointwear.render.rasterizer import (
    Fragments,
    covered_pairs,
    interpolate,
    project,
    rasterize,
)

__all__ = ["Fragments", "covered_pairs", "interpolate", "project", "rasterize"]
