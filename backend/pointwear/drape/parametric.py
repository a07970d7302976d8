"""The `parametric` drape: the procedural garment generator as a differentiable function of a
small interpretable code. Each entry of the code is a logit mapped into that parameter's range
(sleeve length, hem, waist, neckline, ease, flare), so any real vector is a valid outfit and the
prior is simply a standard normal on the logits. An outfit template (which garments) is fixed per
model; fitting tries every template and keeps the best."""
from __future__ import annotations

import numpy as np
import torch

from ..body import BodyModel
from ..garment.body_frame import BodyFrame
from ..garment.outfit import OUTFITS, GarmentMesh, GarmentParams, build_outfit
from .base import DrapeModel, DrapeOutput

# (name, low, high) of every parameter of a garment kind; the code holds their logits in order.
PARAM_RANGES: dict[str, tuple[tuple[str, float, float], ...]] = {
    "top": (("sleeve", 0.0, 1.0), ("hem", 0.5, 1.05), ("neckline", 0.02, 0.14), ("ease", 0.003, 0.06)),
    "trousers": (("hem", 0.15, 1.0), ("waist", 0.5, 0.75), ("ease", 0.003, 0.06)),
    "skirt": (("hem", 0.05, 0.9), ("waist", 0.5, 0.7), ("ease", 0.003, 0.05), ("flare", 0.0, 0.6)),
    "dress": (("sleeve", 0.0, 0.5), ("hem", 0.05, 0.9), ("neckline", 0.02, 0.14), ("ease", 0.003, 0.05),
              ("flare", 0.0, 0.6)),
}
TEMPLATES: dict[str, tuple[str, ...]] = {name: kinds for name, kinds in OUTFITS.items()}


class ParametricDrape(DrapeModel):
    """Clothing points are the vertices of the generator's tube grids (fixed topology per
    template), so the drape also yields a garment mesh (`faces`)."""

    def __init__(self, body: BodyModel, template: str = "tshirt-shorts") -> None:
        super().__init__(body)
        if template not in TEMPLATES:
            raise ValueError(f"parametric drape template must be one of {sorted(TEMPLATES)}, got {template!r}")
        self.template = template
        self.kinds = TEMPLATES[template]
        self.drape_id = f"parametric:{template}"
        self.code_dim = sum(len(PARAM_RANGES[k]) for k in self.kinds)
        self._frames: dict[tuple, BodyFrame] = {}
        self._weights: dict[tuple, np.ndarray] = {}
        self.faces: np.ndarray | None = None
        self.garment_index: np.ndarray | None = None

    def random_codes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.code_dim, generator=generator) * 0.8

    def params(self, code: torch.Tensor) -> list[GarmentParams]:
        """Garment parameters of one (code_dim,) code; entries stay tensors (differentiable)."""
        out, k = [], 0
        for kind in self.kinds:
            values = {}
            for name, lo, hi in PARAM_RANGES[kind]:
                values[name] = lo + (hi - lo) * torch.sigmoid(code[k])
                k += 1
            out.append(GarmentParams(kind, **values))
        return out

    def describe(self, code: torch.Tensor) -> list[dict]:
        return [{"kind": p.kind, **{n: float(getattr(p, n)) for n, _, _ in PARAM_RANGES[p.kind]}}
                for p in self.params(code.detach())]

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
