"""Drape models: outfit code + body shape -> clothing points with skin weights.

`make_drapes` turns the CLI's --drape value into the models a fit tries: every parametric
template (or the one asked for), or the neural drape from its checkpoint."""
from __future__ import annotations

from pathlib import Path

from ..body import BodyModel
from .base import DrapeModel, DrapeOutput
from .parametric import TEMPLATES, ParametricDrape

__all__ = ["DrapeModel", "DrapeOutput", "ParametricDrape", "TEMPLATES", "make_drapes", "drape_from_id"]


def make_drapes(spec: str, body: BodyModel, template: str | None = None) -> list[DrapeModel]:
    if spec == "parametric":
        names = [template] if template else list(TEMPLATES)
        return [ParametricDrape(body, name) for name in names]
    from .neural import load_neural_drape
    path = None if spec == "neural" else Path(spec)
    return [load_neural_drape(path, body)]


def drape_from_id(drape_id: str, body: BodyModel, checkpoint: str | None = None) -> DrapeModel:
    """Rebuild the drape a result was fitted with (for re-draping on another body)."""
    kind, _, name = drape_id.partition(":")
    if kind == "parametric":
        return ParametricDrape(body, name)
    from .neural import load_neural_drape
    return load_neural_drape(Path(checkpoint) if checkpoint else None, body)
