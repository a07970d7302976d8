"""Appearance: learned per-point descriptors and the U-Net that renders them (Point-Based
Clothing / NPBG). Points are splatted by `pointwear.render.splat`."""
from pointwear.appearance.descriptors import PointDescriptors
from pointwear.appearance.unet import RenderNet

__all__ = ["PointDescriptors", "RenderNet"]
