"""The `parametric` drape: the procedural garment generator as a differentiable function of a
small interpretable code. Each entry of the code is a logit mapped into that parameter's range
(sleeve length, hem, waist, neckline, ease, flare), so any real vector is a valid outfit and the
prior is simply a standard normal on the logits. An outfit template (which garments) is fixed per
model; fitting chooses the garments (fit/selection.py)."""
from __future__ import annotations

import weakref

import numpy as np
import torch

from ..body import BodyModel
from ..garment.body_frame import BodyFrame
from ..garment.families import ABSENT_LOGIT, FAMILIES, FINE_ONLY, LEGACY_OUTFITS, outfit_families, outfit_name
from ..garment.outfit import GarmentMesh, GarmentParams, build_outfit, garment_pieces, outfit_weights
from .base import DrapeModel, DrapeOutput

TEMPLATES: dict[str, tuple[str, ...]] = dict(LEGACY_OUTFITS)   # the four outfits of older results

# Body frames (radius fields, region trees) per body model and shape, shared by every drape of
# that body: the 33 outfits an unlabelled fit compares build them once, not once each.
_BODY_FRAMES: "weakref.WeakKeyDictionary[BodyModel, dict[tuple, BodyFrame]]" = weakref.WeakKeyDictionary()


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
        # (code_dim,) bool: the logits the coarse stage holds at the low end (families.FINE_ONLY)
        self.fine_only = torch.tensor([name in FINE_ONLY.get(f.name, ()) for f in self.families
                                       for name, _, _ in f.ranges], dtype=torch.bool)
        self.fine_only_index = [int(i) for i in self.fine_only.nonzero().reshape(-1)]   # host list
        self._frames: dict[tuple, BodyFrame] = _BODY_FRAMES.setdefault(body, {})
        self._weights: dict[tuple, torch.Tensor] = {}
        self._betas_seen: tuple | None = None     # (betas tensor, its version, host key)
        self.faces: np.ndarray | None = None
        self.garment_index: np.ndarray | None = None

    def random_codes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The first code is every parameter at the middle of its range (a fair start for every
        family when only one code per candidate competes); the rest are random. The `fine_only`
        logits sit at the low end (ABSENT_LOGIT) and take no random draw, so the other draws are
        those of before they existed. (n, code_dim)."""
        free = torch.randn(n, int((~self.fine_only).sum()), generator=generator) * 0.8
        free[0] = 0.0
        codes = torch.full((n, self.code_dim), ABSENT_LOGIT)
        codes[:, ~self.fine_only] = free
        return codes

    def params(self, code: torch.Tensor) -> list[GarmentParams]:
        """Garment parameters of one (code_dim,) code, entries scalar tensors (differentiable);
        of (C, code_dim) codes, entries (C, 1, 1) tensors (build_outfit makes C outfits at once)."""
        out = []
        for fam, seg in zip(self.families, self.segments):
            values = dict(fam.fixed)
            logits = code[..., seg]
            for k, (name, lo, hi) in enumerate(fam.ranges):
                logit = logits[..., k]
                values[name] = lo + (hi - lo) * torch.sigmoid(logit if code.dim() == 1 else logit[:, None, None])
            out.append(GarmentParams(fam.kind, **values))
        return out

    def describe(self, code: torch.Tensor) -> list[dict]:
        """Each garment: its name, family slot and layer, geometry kind and parameter values."""
        return [{"name": fam.name, "kind": p.kind, "slot": fam.slot, "layer": fam.layer,
                 **{n: float(getattr(p, n)) for n, _, _ in fam.ranges}}
                for fam, p in zip(self.families, self.params(code.detach()))]

    def _betas_key(self, betas: torch.Tensor) -> tuple:
        """Rounded betas as a host key; read from the device only when the betas tensor is new
        or was changed in place (a fit passes the same one every step: no host round-trip)."""
        seen = self._betas_seen
        if seen is not None and seen[0] is betas and seen[1] == betas._version:
            return seen[2]
        key = tuple(np.round(betas.detach().reshape(-1).cpu().numpy().astype(np.float64), 5))
        self._betas_seen = (betas, betas._version, key)
        return key

    def body_frame(self, betas: torch.Tensor, key: tuple | None = None) -> BodyFrame:
        key = self._betas_key(betas) if key is None else key
        if key not in self._frames:
            v, j = (t[0].detach().cpu().numpy() for t in self.body.shaped(betas[None]))
            self._frames[key] = BodyFrame(v, j, self.body.weights_np)
        return self._frames[key]

    def mesh(self, code: torch.Tensor, betas: torch.Tensor, with_weights: bool = True) -> GarmentMesh:
        frame = self.body_frame(betas.reshape(-1))
        mesh = build_outfit(frame, self.params(code), list(self.kinds), keep_sleeves=True,
                            with_weights=with_weights)
        self._topology(mesh)
        return mesh

    def forward(self, code: torch.Tensor, betas: torch.Tensor, refresh_weights: bool = True) -> DrapeOutput:
        """`refresh_weights=False` reuses the skin weights last computed for that body (fitting
        moves points little between steps; nearest-vertex weights need no gradient). All codes
        on one body shape are built at once, on the code's device."""
        code = code.reshape(-1, self.code_dim)
        betas_in = betas
        betas = self.body.betas_tensor(betas)
        if betas.shape[0] > 1:           # a shape per code: one outfit at a time
            outs = [self.forward(code[b:b + 1], betas[b:b + 1], refresh_weights) for b in range(code.shape[0])]
            return DrapeOutput(torch.cat([o.points for o in outs]), torch.cat([o.weights for o in outs]),
                               torch.cat([o.presence for o in outs]))
        key = self._betas_key(betas_in if torch.is_tensor(betas_in) else betas)
        frame = self.body_frame(betas[0], key)
        params = self.params(code)
        mesh = build_outfit(frame, params, list(self.kinds), keep_sleeves=True, with_weights=False)
        self._topology(mesh)
        keys = [(key, b) for b in range(code.shape[0])]
        if refresh_weights or any(k not in self._weights for k in keys):
            pieces = [pc for p in params for pc in garment_pieces(frame, p, keep_sleeves=True)]
            fresh = torch.as_tensor(outfit_weights(frame, pieces, mesh.vertices), device=code.device)
            for k, w in zip(keys, fresh):
                self._weights[k] = w
        weights = torch.stack([self._weights[k] for k in keys])
        presence = mesh.presence.expand(mesh.vertices.shape[:-1])
        return DrapeOutput(mesh.vertices, weights.to(device=code.device, dtype=mesh.vertices.dtype), presence)

    def _topology(self, mesh: GarmentMesh) -> None:
        """Faces and garment index of the outfit (fixed per template: kept once)."""
        if self.faces is None:
            self.faces, self.garment_index = mesh.faces, mesh.garment
