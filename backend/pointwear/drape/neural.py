"""The `neural` drape model: a small draping network in the spirit of Point-Based Modeling of
Human Clothing, sized for a CPU.

An 8-D outfit code (kept in the unit L2 ball) goes through an MLP to a style vector. A point
decoder works on a fixed set of body points, sampled area-uniformly (fixed seed, fixed faces and
barycentric coordinates) over the clothing-capable body surface: everything but the head, hands
and feet, as told by the skin weights. Each body point's features (rest-pose position and normal
for the given betas, plus Fourier features, normal and region of its place on the template) go
through per-point layers whose weights are modulated by the style (per-channel scale and shift,
AdaIN-like), with a pooled global context fed back; the output is an offset, and the clothing point
is body point + offset in the canonical (rest, T-pose) body frame. Skin weights of a clothing point
are the body's weights at its source point (barycentric, lightly smoothed over neighbours), so the
body's skinning poses the clothing; around the legs of a skirt or dress (told by how far the cloth
stands off the legs) they share the generator's pelvis share (`garment.outfit.hanging_weights`).

Checkpoints (`save_neural_drape` / `load_neural_drape`) hold the state dict, the
hyper-parameters, the body fingerprint and the sampled faces + barycentrics; one that does not
match the body or the architecture is refused with an `InputError` naming the file.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..body import BodyModel
from ..body.regions import REGION_NAMES, region_labels
from ..errors import InputError
from ..garment.outfit import LEG_JOINTS, hanging_weights
from .base import DrapeModel, DrapeOutput

DEFAULT_CHECKPOINT = Path(__file__).parent / "data" / "neural_default.pt"
CHECKPOINT_FORMAT = "pointwear-neural-drape"
CHECKPOINT_VERSION = 1
EXCLUDED_REGIONS = ("head", "left_hand", "right_hand", "left_foot", "right_foot")


@dataclass
class NeuralDrapeConfig:
    """Hyper-parameters: everything that changes the architecture or the body sampling."""
    points: int = 8192          # body points = clothing points
    width: int = 48             # per-point channels
    layers: int = 2             # style-modulated per-point layers after the first
    style_dim: int = 128        # style vector from the code MLP
    template_hidden: int = 128  # hidden width of the template-feature MLP (shared over the batch)
    fourier: int = 6            # Fourier octaves of the template position
    offset_scale: float = 0.1   # metres per unit of decoder output
    sample_seed: int = 0        # seed of the area-uniform body sampling
    weight_smoothing: int = 8   # neighbours averaged for the skin weights (1 = none)
    # A skirt or dress hangs (garment.outfit.hanging_weights) when its cloth stands off the legs:
    # the 90th percentile of the leg points' distances to the body (rest pose) ramps the share
    # in from `hang_from` to `hang_full` metres. Not architecture: checkpoints without these
    # fields read the defaults.
    hang_queries: int = 256     # leg points (evenly spaced over them) whose distance is measured
    hang_from: float = 0.05     # metres: at or below, the legs' points keep their leg weights
    hang_full: float = 0.07     # metres: at or above, the full pelvis share

    @classmethod
    def from_dict(cls, d: dict) -> "NeuralDrapeConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown hyper-parameters {unknown}")
        return cls(**d)


# -- body sampling -------------------------------------------------------------------------------
def clothing_faces(body: BodyModel) -> np.ndarray:
    """Indices of body faces whose three vertices all lie in clothing-capable regions."""
    labels = region_labels(body.weights_np)
    excluded = np.isin(labels, [REGION_NAMES.index(r) for r in EXCLUDED_REGIONS])
    return np.flatnonzero(~excluded[body.faces].any(1))


def sample_body_points(body: BodyModel, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed area-uniform samples over the clothing-capable template surface:
    (body face index (count,), barycentrics (count, 3))."""
    from ..synth.generate import sample_surface
    allowed = clothing_faces(body)
    template = body.smpl.v_template.detach().cpu().numpy().astype(np.float64)
    local, bary = sample_surface(template, body.faces[allowed], count, np.random.default_rng(seed))
    return allowed[local].astype(np.int64), bary.astype(np.float32)


def body_fingerprint(body: BodyModel) -> dict:
    """Vertex and face counts and a hash of the template mesh: what a checkpoint was trained on."""
    template = body.smpl.v_template.detach().cpu().numpy().astype(np.float32)
    digest = hashlib.sha1(np.ascontiguousarray(template).tobytes())
    digest.update(np.ascontiguousarray(body.faces.astype(np.int64)).tobytes())
    return {"vertices": int(template.shape[0]), "faces": int(body.faces.shape[0]),
            "template_sha1": digest.hexdigest()}


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) area-weighted unit vertex normals."""
    tri = vertices[:, faces]                                        # (B, F, 3, 3)
    fn = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    vn = torch.zeros_like(vertices)
    for k in range(3):
        vn.index_add_(1, faces[:, k], fn)
    return vn / vn.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def project_to_ball(code: torch.Tensor) -> torch.Tensor:
    """Codes outside the unit L2 ball are scaled back onto its surface."""
    return code / code.norm(dim=-1, keepdim=True).clamp_min(1.0)


# -- the network ---------------------------------------------------------------------------------
class NeuralDrape(DrapeModel):
    drape_id = "neural"
    code_dim = 8

    def __init__(self, body: BodyModel, config: NeuralDrapeConfig | None = None,
                 face_idx: np.ndarray | None = None, bary: np.ndarray | None = None) -> None:
        super().__init__(body)
        self.config = cfg = config or NeuralDrapeConfig()
        if face_idx is None or bary is None:
            face_idx, bary = sample_body_points(body, cfg.points, cfg.sample_seed)
        if len(face_idx) != cfg.points or np.shape(bary) != (cfg.points, 3):
            raise ValueError(f"expected {cfg.points} body samples, got {len(face_idx)} faces "
                             f"and barycentrics of shape {np.shape(bary)}")
        device = body.device
        corners = torch.as_tensor(body.faces[np.asarray(face_idx)], dtype=torch.long, device=device)
        self.register_buffer("corners", corners, persistent=False)             # (P, 3)
        self.register_buffer("face_idx", torch.as_tensor(np.asarray(face_idx), dtype=torch.long,
                                                         device=device), persistent=False)
        self.register_buffer("bary", torch.as_tensor(bary, dtype=torch.float32, device=device),
                             persistent=False)                                  # (P, 3)
        self.register_buffer("skin_weights", self._skin_weights(), persistent=False)
        query, reference = self._hang_samples()
        self.register_buffer("hang_query", query, persistent=False)             # (Q,)
        self.register_buffer("hang_reference", reference, persistent=False)     # (R,)
        self.register_buffer("template_features", self._template_features(), persistent=False)
        self.register_buffer("train_codes", torch.zeros(0, self.code_dim, device=device),
                             persistent=False)

        w, h, s = cfg.width, cfg.template_hidden, cfg.style_dim
        self.template_mlp = nn.Sequential(
            nn.Linear(self.template_features.shape[1], h), nn.ReLU(),
            nn.Linear(h, h), nn.ReLU(), nn.Linear(h, w))
        self.input = nn.Linear(9, w)
        self.style_mlp = nn.Sequential(nn.Linear(self.code_dim, s), nn.ReLU(), nn.Linear(s, s), nn.ReLU())
        self.modulation = nn.Linear(s, 2 * w * (cfg.layers + 1))
        self.layer_weight = nn.Parameter(torch.randn(cfg.layers, w, w) * math.sqrt(2.0 / w) * 0.5)
        self.layer_bias = nn.Parameter(torch.zeros(cfg.layers, w))
        self.context = nn.Linear(w, w)
        self.head = nn.Linear(w, 3)
        with torch.no_grad():
            self.modulation.weight.mul_(0.1)
            self.modulation.bias.zero_()
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
        self.to(device)
        self._template_cache: tuple | None = None

    # -- fixed per-point data --------------------------------------------------------------------
    def _interp(self, per_vertex: torch.Tensor, subset: torch.Tensor | None = None) -> torch.Tensor:
        """Barycentric interpolation of (..., V, C) per-vertex values at the P samples (or a subset)."""
        corners, bary = self.corners, self.bary
        if subset is not None:
            corners, bary = corners[subset], bary[subset]
        return torch.einsum("pk,...pkc->...pc", bary, per_vertex[..., corners, :])

    def _skin_weights(self) -> torch.Tensor:
        w = self._interp(torch.as_tensor(self.body.weights_np, device=self.bary.device))
        k = self.config.weight_smoothing
        if k > 1:   # average over the k nearest samples on the template: no seams between faces
            pos = self._interp(self.body.smpl.v_template.detach())
            idx = _knn(pos, k)
            w = w[idx].mean(1)
        return w / w.sum(1, keepdim=True)

    def _hang_samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the body samples that tell whether the cloth hangs: `hang_queries` of the
        leg samples (more than half their weight on leg joints), evenly spaced, (Q,); and the
        lower body (leg + pelvis weight over half) they are measured against, (R,)."""
        w = self.skin_weights
        legs = w[:, list(LEG_JOINTS)].sum(1)
        leg_idx = torch.nonzero(legs > 0.5).reshape(-1)
        pick = torch.linspace(0, len(leg_idx) - 1, min(self.config.hang_queries, len(leg_idx)),
                              device=w.device).round().long()
        reference = torch.nonzero(legs + w[:, 0] > 0.5).reshape(-1)
        return leg_idx[pick], reference

    def hanging(self, points: torch.Tensor, body_points: torch.Tensor) -> torch.Tensor:
        """(B,) 0..1 how much the cloth around the legs hangs (a skirt or dress: 1; trousers,
        shorts: 0), from rest-pose clothing points (B, P, 3) and their body points (B or 1, P, 3):
        the 90th percentile of the query leg points' distances to the lower body, ramped from
        `hang_from` to `hang_full`. No gradient; no host round-trip."""
        cfg = self.config
        with torch.no_grad():
            q = points[:, self.hang_query]
            ref = body_points[:, self.hang_reference].expand(len(q), -1, -1)
            dist = torch.cdist(q, ref).amin(-1)                         # (B, Q)
            p90 = torch.quantile(dist, 0.9, dim=1)
            return ((p90 - cfg.hang_from) / (cfg.hang_full - cfg.hang_from)).clamp(0.0, 1.0)

    def _template_features(self) -> torch.Tensor:
        """(P, F) fixed features of each sample's place on the template: centred position, its
        Fourier features, the template normal and a one-hot of the body region."""
        template = self.body.smpl.v_template.detach()[None]
        pos = self._interp(template)[0]
        pos = pos - pos.mean(0, keepdim=True)
        normal = self._interp(vertex_normals(template, self.body.faces_t.to(template.device)))[0]
        normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        freqs = math.pi * 2.0 ** torch.arange(self.config.fourier, device=pos.device, dtype=pos.dtype)
        angles = (pos[:, :, None] * freqs).reshape(len(pos), -1)
        labels = torch.as_tensor(region_labels(self.body.weights_np), device=pos.device)
        one_hot = torch.nn.functional.one_hot(labels, len(REGION_NAMES)).float()
        region = self._interp(one_hot[None])[0]
        return torch.cat([pos, torch.sin(angles), torch.cos(angles), normal, region], 1)

    @property
    def num_points(self) -> int:
        return int(self.bary.shape[0])

    # -- DrapeModel --------------------------------------------------------------------------------
    def random_codes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes of random training outfits, jittered; a small normal draw if untrained."""
        device = self.bary.device
        if len(self.train_codes):
            pick = torch.randint(len(self.train_codes), (n,), generator=generator)
            noise = torch.randn(n, self.code_dim, generator=generator) * 0.05
            codes = self.train_codes.cpu()[pick] + noise
        else:
            codes = torch.randn(n, self.code_dim, generator=generator) * 0.1
        return project_to_ball(codes).to(device)

    def constrain(self, code: torch.Tensor) -> torch.Tensor:
        return project_to_ball(code)

    def body_points(self, betas: torch.Tensor, subset: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, 3) rest-pose body sample positions and unit normals for these betas."""
        verts, _ = self.body.shaped(betas)
        normals = vertex_normals(verts, self.body.faces_t.to(verts.device))
        n = self._interp(normals, subset)
        return self._interp(verts, subset), n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def forward(self, code: torch.Tensor, betas: torch.Tensor, refresh_weights: bool = True,
                subset: torch.Tensor | None = None) -> DrapeOutput:
        """Rest-pose clothing points (B, P, 3) and skin weights (B, P, 24) for (B, 8) codes on
        (B or 1, S) betas. `subset` (indices into the P body points) evaluates only those points
        (training), with the source points' weights (P', 24): no hanging share."""
        points, weights, body_points = self.decode(code, betas, subset)
        if subset is None:   # skirts and dresses hang like the generator's (training keeps leg weights)
            hang = self.hanging(points, body_points)
            weights = hanging_weights(weights.expand(len(points), -1, -1), hang[:, None, None])
        return DrapeOutput(points, weights)

    def decode(self, code: torch.Tensor, betas: torch.Tensor, subset: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clothing points (B, P, 3), skin weights (P, 24), their body points (B or 1, P, 3))."""
        code = project_to_ball(code.reshape(-1, self.code_dim).to(self.bary.device))
        betas_in, betas = betas, self.body.betas_tensor(betas)
        batch = max(code.shape[0], betas.shape[0])
        if code.shape[0] != batch:
            code = code.expand(batch, -1)
        x, pre = self._body_features(betas, subset, betas_in)       # (B or 1, P, 3), (B or 1, P, W)
        weights = self.skin_weights if subset is None else self.skin_weights[subset]

        mod = self.modulation(self.style_mlp(code)).view(code.shape[0], self.config.layers + 1, 2, -1)
        scale, shift = 1.0 + mod[:, :, 0], mod[:, :, 1]               # (B, L+1, W)
        h = torch.relu(torch.addcmul(shift[:, 0, None], pre, scale[:, 0, None]))
        for layer in range(self.config.layers):
            bias = shift[:, layer + 1] + self.layer_bias[layer]
            if layer == 0:   # global context: mean-pooled features fed back (robust to subsets)
                bias = bias + self.context(h.mean(1))
            weight = self.layer_weight[layer][None] * scale[:, layer + 1, None, :]
            h = h + torch.relu(torch.baddbmm(bias[:, None, :], h, weight))
        points = x + self.config.offset_scale * self.head(h)
        return points, weights, x

    # -- code-independent features (cached when the network is frozen) ----------------------------
    def _frozen(self) -> bool:
        return not torch.is_grad_enabled() or not any(p.requires_grad for p in self.parameters())

    def _params_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.parameters())

    def _betas_key(self, betas: torch.Tensor, betas_in) -> tuple:
        """The betas' values as a cache key, read from the device only when the caller's betas
        tensor is new or changed in place (a fit passes the same one every step)."""
        seen = self.__dict__.get("_betas_seen")
        if torch.is_tensor(betas_in) and seen is not None and seen[0] is betas_in and seen[1] == betas_in._version:
            return seen[2]
        key = (tuple(betas.shape), betas.detach().cpu().numpy().tobytes())
        if torch.is_tensor(betas_in):
            self.__dict__["_betas_seen"] = (betas_in, betas_in._version, key)
        return key

    def _body_features(self, betas: torch.Tensor, subset: torch.Tensor | None, betas_in=None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Body points for the betas and the first layer's code-independent pre-activation
        (template MLP + linear of position, shape offset and normal). When the network is frozen
        and the betas need no gradient (fitting a code), both are cached per betas."""
        cacheable = subset is None and not betas.requires_grad and self._frozen() and not betas.is_meta
        if cacheable:
            key = (*self._betas_key(betas, betas_in), self._params_key())
            cached = self.__dict__.get("_features_cache")
            if cached is not None and cached[0] == key:
                return cached[1], cached[2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not cacheable):
            x, n = self.body_points(betas, subset)
            x_t = self._template_position(subset)
            feats = torch.cat([x - x_t, x, n], -1)                  # (B or 1, P, 9)
            pre = self._template_hidden(subset)[None] + self.input(feats)
        if cacheable:
            self.__dict__["_features_cache"] = (key, x, pre)
        return x, pre

    def _template_position(self, subset: torch.Tensor | None) -> torch.Tensor:
        cache = self.__dict__.get("_x_template")
        if cache is None:
            cache = self._interp(self.body.smpl.v_template.detach())
            self.__dict__["_x_template"] = cache
        return cache if subset is None else cache[subset]

    def _template_hidden(self, subset: torch.Tensor | None) -> torch.Tensor:
        params = list(self.template_mlp.parameters())
        frozen = not torch.is_grad_enabled() or not any(p.requires_grad for p in params)
        if subset is not None or not frozen:
            feats = self.template_features if subset is None else self.template_features[subset]
            return self.template_mlp(feats)
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._template_cache is None or self._template_cache[0] != key:
            with torch.no_grad():
                self._template_cache = (key, self.template_mlp(self.template_features))
        return self._template_cache[1]

    def _apply(self, fn, *args, **kwargs):   # device moves invalidate the caches
        self._template_cache = None
        self.__dict__.pop("_x_template", None)
        self.__dict__.pop("_features_cache", None)
        return super()._apply(fn, *args, **kwargs)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p is not None) - sum(
            p.numel() for p in self.body.parameters())


def _knn(points: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """(P, k) indices of each point's k nearest points (itself included)."""
    out = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start:start + chunk], points)
        out.append(d.topk(k, largest=False).indices)
    return torch.cat(out)


# -- checkpoints ---------------------------------------------------------------------------------
def save_neural_drape(model: NeuralDrape, path: str | Path, meta: dict | None = None) -> Path:
    """Write a checkpoint: state dict, hyper-parameters, body fingerprint, samples, codes."""
    import json

    from ..fileio import atomic_path
    path = Path(path)
    meta = json.loads(json.dumps(meta or {}, default=str))   # plain types: loadable with weights_only
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("body.")}
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "drape_id": model.drape_id,
        "code_dim": model.code_dim, "config": asdict(model.config),
        "body": body_fingerprint(model.body),
        "face_idx": model.face_idx.cpu(), "bary": model.bary.cpu(),
        "train_codes": model.train_codes.cpu(),
        "state_dict": {k: v.cpu() for k, v in state.items()},
        "meta": meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate the container of a checkpoint (not yet the body or weights)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("drape checkpoint not found", file=path,
                         hint="train one with scripts/train_drape.py or omit the path for the default")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # truncated, not a torch file, pickled code, ...
        raise InputError(f"not a readable drape checkpoint ({type(exc).__name__}: {exc})".strip(),
                         file=path, hint="the file is corrupt or not a torch checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a Pointwear neural drape checkpoint", file=path, field="format")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"checkpoint version {payload.get('version')!r}, this Pointwear reads "
                         f"version {CHECKPOINT_VERSION}", file=path, field="version")
    for key in ("config", "body", "face_idx", "bary", "state_dict"):
        if key not in payload:
            raise InputError("missing entry", file=path, field=key)
    return payload


def load_neural_drape(path: str | Path | None, body: BodyModel) -> NeuralDrape:
    """The neural drape from a checkpoint (None: the committed default) for this body, frozen
    (eval mode, no parameter gradients: codes are what gets fitted). Raises InputError naming
    the file when it is corrupt, of another architecture or trained on another body."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    payload = read_checkpoint(path)
    if payload.get("code_dim") != NeuralDrape.code_dim:
        raise InputError(f"code_dim {payload.get('code_dim')!r}, expected {NeuralDrape.code_dim}",
                         file=path, field="code_dim", hint="a checkpoint of another architecture")
    theirs, ours = payload["body"], body_fingerprint(body)
    if theirs != ours:
        raise InputError(
            f"trained on another body ({theirs.get('vertices')} vertices, {theirs.get('faces')} faces, "
            f"template {str(theirs.get('template_sha1'))[:12]}) but this body ({body.source}) has "
            f"{ours['vertices']} vertices, {ours['faces']} faces, template {ours['template_sha1'][:12]}",
            file=path, field="body", hint="train a drape for this body with scripts/train_drape.py --body")
    try:
        config = NeuralDrapeConfig.from_dict(dict(payload["config"]))
        face_idx = np.asarray(payload["face_idx"], dtype=np.int64)
        bary = np.asarray(payload["bary"], dtype=np.float32)
        if face_idx.size and (face_idx.min() < 0 or face_idx.max() >= len(body.faces)):
            raise ValueError("sample face indices out of range")
        model = NeuralDrape(body, config, face_idx, bary)
        state = {f"{k}": v for k, v in payload["state_dict"].items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("body.")]
        if missing or unexpected:
            raise ValueError(f"missing weights {missing[:4]}, unexpected weights {unexpected[:4]}")
        codes = payload.get("train_codes")
        if codes is not None and len(codes):
            model.train_codes = torch.as_tensor(codes, dtype=torch.float32).reshape(-1, model.code_dim)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise InputError(f"a checkpoint of another architecture: {exc}", file=path, field="state_dict",
                         hint="retrain it with this version's scripts/train_drape.py") from None
    model.eval()
    for p in model.parameters():   # frozen, as fitting uses it; requires_grad_(True) to fine-tune
        p.requires_grad_(False)
    model.checkpoint_path = str(path)
    model.checkpoint_meta = dict(payload.get("meta") or {})
    return model.to(body.device)
