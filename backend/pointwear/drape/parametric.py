"""The `parametric` drape: the procedural garment generator as a differentiable function of a
small interpretable code. Each entry of the code is a logit mapped into that parameter's range
(sleeve length, hem, waist, neckline, ease, flare), so any real vector is a valid outfit and the
prior is simply a standard normal on the logits. An outfit template (which garments) is fixed per
model; fitting chooses the garments (fit/selection.py)."""
from __future__ import annotations

import numpy as np
import torch

from ..body import BodyModel
from ..garment.body_frame import BodyFrame
from ..garment.families import FAMILIES, LEGACY_OUTFITS, outfit_families, outfit_name
from ..garment.outfit import GarmentMesh, GarmentParams, build_outfit
from .base import DrapeModel, DrapeOutput

TEMPLATES: dict[str, tuple[str, ...]] = dict(LEGACY_OUTFITS)   # the four outfits of older results


class ParametricDrape(DrapeModel):
    """Clothing points are the vertices of the generator's tube grids (fixed topology per
    outfit), so the drape also yields a garment mesh (`faces`). `template` is an outfit spec:
    garment families joined by '+' ("jacket+tshirt+trousers", families.py) or a legacy outfit
    name ("tshirt-shorts"). The code is the garments' codes one after the other, inner layer
    first; `segments[g]` is garment g's slice of it."""

    def __init__(self, body: BodyModel, template: str = "tshirt-shorts") -> None:
        super().__init__(body)
        try:
            self.families = outfit_families(template)
        except ValueError as exc:
            raise ValueError(f"parametric drape: {exc}") from None
        legacy = template in LEGACY_OUTFITS and template not in FAMILIES
        self.template = template if legacy else outfit_name(self.families)
        self.kinds = tuple(f.name for f in self.families)        # garment names, inner layer first
        self.slots = tuple(f.slot for f in self.families)
        self.drape_id = f"parametric:{self.template}"
        bounds = np.cumsum([0] + [f.code_dim for f in self.families])
        self.segments = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.code_dim = int(bounds[-1])
        self._frames: dict[tuple, BodyFrame] = {}
        self._weights: dict[tuple, np.ndarray] = {}
        self.faces: np.ndarray | None = None
        self.garment_index: np.ndarray | None = None

    def random_codes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The first code is every parameter at the middle of its range (a fair start for every
        family when only one code per candidate competes); the rest are random."""
        codes = torch.randn(n, self.code_dim, generator=generator) * 0.8
        codes[0] = 0.0
        return codes

    def params(self, code: torch.Tensor) -> list[GarmentParams]:
        """Garment parameters of one (code_dim,) code; entries stay tensors (differentiable)."""
        out = []
        for fam, seg in zip(self.families, self.segments):
            values = dict(fam.fixed)
            for (name, lo, hi), logit in zip(fam.ranges, code[seg]):
                values[name] = lo + (hi - lo) * torch.sigmoid(logit)
            out.append(GarmentParams(fam.kind, **values))
        return out

    def describe(self, code: torch.Tensor) -> list[dict]:
        """Each garment: its name, family slot and layer, geometry kind and parameter values."""
        return [{"name": fam.name, "kind": p.kind, "slot": fam.slot, "layer": fam.layer,
                 **{n: float(getattr(p, n)) for n, _, _ in fam.ranges}}
                for fam, p in zip(self.families, self.params(code.detach()))]

    def body_frame(self, betas: torch.Tensor) -> BodyFrame:
        key = tuple(np.round(betas.detach().cpu().numpy().astype(np.float64), 5))
        if key not in self._frames:
            v, j = (t[0].detach().cpu().numpy() for t in self.body.shaped(betas[None]))
            self._frames[key] = BodyFrame(v, j, self.body.weights_np)
        return self._frames[key]

    def mesh(self, code: torch.Tensor, betas: torch.Tensor, with_weights: bool = True) -> GarmentMesh:
        frame = self.body_frame(betas.reshape(-1))
        mesh = build_outfit(frame, self.params(code), list(self.kinds), keep_sleeves=True,
                            with_weights=with_weights)
        self.faces, self.garment_index = mesh.faces, mesh.garment
        return mesh

    def forward(self, code: torch.Tensor, betas: torch.Tensor, refresh_weights: bool = True) -> DrapeOutput:
        """`refresh_weights=False` reuses the skin weights last computed for that body (fitting
        moves points little between steps; nearest-vertex weights need no gradient)."""
        betas = self.body.betas_tensor(betas)
        code = code.reshape(-1, self.code_dim)
        points, weights = [], []
        for b in range(code.shape[0]):
            beta = betas[b if betas.shape[0] > 1 else 0]
            key = (tuple(np.round(beta.detach().cpu().numpy(), 5)), b)
            need = refresh_weights or key not in self._weights
            mesh = self.mesh(code[b], beta, with_weights=need)
            if need:
                self._weights[key] = mesh.weights
            points.append(mesh.vertices.to(self.body.device))
            weights.append(torch.as_tensor(self._weights[key], device=self.body.device))
        return DrapeOutput(torch.stack(points), torch.stack(weights))
