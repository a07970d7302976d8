"""Pointwear backend. Its version is the product's one version, defined in the protocol module
(addon/link/protocol.py, shipped as ``pointwear.link.protocol``)."""
from .link.protocol import PROTOCOL_VERSION, VERSION as __version__

__all__ = ["PROTOCOL_VERSION", "__version__"]
