"""Outfit sliders: a fitted result's garment parameters as named sliders, edited exactly
(`pointwear edit RESULT --set sleeve=0.4 --out NEW`) or live in Blender from a slider table.

Sliders of a result:
- parametric drape: every parameter of every garment family (garment/families.py), named
  "<garment>.<parameter>" ("tshirt.sleeve", "shorts.hem") with the family's range; the value is
  the parameter itself (a fraction of a length, metres of ease, radians of opening). "looseness"
  is another name for "ease".
- neural drape: a few learned, named directions of its 8-D code space at the fitted code: the
  principal directions of the drape's response (the right singular vectors of d points / d code),
  each named by the garment measure it changes most (length, looseness, flare) and signed so that
  measure grows; the value t in [-1, 1] moves the code by t * NEURAL_STEP along it.

The slider table (`sliders.npz`, docs/protocol.md "Slider tables") holds, per slider, the exact
rest-pose points at SAMPLES values over its range with every other slider at the result's value,
as differences from the result's points. The add-on evaluates it in numpy: points = base + the
sum over moved sliders of the difference interpolated at the slider's value (exact for one slider
at a sample, a first-order blend for several), so a slider re-drapes the garment without torch;
"Apply" (the `edit` job) then drapes the chosen values exactly.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..body import load_body
from ..errors import InputError
from ..fileio import atomic_path, load_npz, save_npz
from ..link.protocol import BODY_NPZ, OUTFIT_NPZ, POSED_NPZ, RESULT_JSON, SLIDERS_NPZ
from . import drape_from_id
from .base import present_points
from .redrape import load_outfit

SAMPLES = 10                  # table samples per slider (9 evenly over its range + the fitted value)
NEURAL_STEP = 0.5             # code-space distance of a neural direction's full slider travel
NEURAL_DIRECTIONS = 3         # named directions offered for a neural drape
ALIASES = {"looseness": "ease"}
EDGE = 1e-4                   # a parametric value is kept this fraction of its range inside it


@dataclass
class Slider:
    name: str                 # "tshirt.sleeve" or "outfit.length"
    garment: str
    param: str
    low: float
    high: float
    value: float              # the result's own value


# -- sliders of a result ------------------------------------------------------------------------

def _families(drape) -> tuple:
    return tuple(drape.families)


def parametric_sliders(drape, code: torch.Tensor) -> list[Slider]:
    out = []
    for fam, seg in zip(_families(drape), drape.segments):
        for (name, lo, hi), logit in zip(fam.ranges, code[seg]):
            value = lo + (hi - lo) * float(torch.sigmoid(logit))
            out.append(Slider(f"{fam.name}.{name}", fam.name, name, float(lo), float(hi), value))
    return out


def _measures(drape, points: torch.Tensor, betas: torch.Tensor) -> dict[str, float]:
    """Garment measures of (P, 3) rest points: length (how far the lowest 2 % hang below the
    pelvis), looseness (mean distance from the body points the drape starts from) and flare
    (mean horizontal spread of the points below the hips)."""
    y = points[:, 1]
    low = torch.quantile(y, 0.02)
    base, _ = drape.body_points(betas)
    loose = (points - base[0]).norm(dim=-1).mean()
    hips = torch.quantile(y, 0.35)
    below = points[y < hips]
    centre = below[:, [0, 2]].mean(0)
    flare = (below[:, [0, 2]] - centre).norm(dim=-1).mean() if len(below) else y.new_zeros(())
    return {"length": float(-low), "looseness": float(loose), "flare": float(flare)}


@torch.no_grad()
def neural_directions(drape, code: torch.Tensor, betas: torch.Tensor, eps: float = 0.05
                      ) -> tuple[list[str], torch.Tensor]:
    """NEURAL_DIRECTIONS unit directions (K, D) of the code space at `code` (D,) with their names:
    the principal directions of the points' response, named and signed by the measure each
    changes most (deterministic: central differences, no randomness)."""
    dim = code.shape[-1]
    eye = torch.eye(dim, device=code.device)
    cols = []
    for i in range(dim):
        plus = drape(drape.constrain((code + eps * eye[i])[None]), betas).points[0]
        minus = drape(drape.constrain((code - eps * eye[i])[None]), betas).points[0]
        cols.append(((plus - minus) / (2 * eps)).reshape(-1))
    jac = torch.stack(cols, 1)                                     # (3P, D)
    _, _, vt = torch.linalg.svd(jac, full_matrices=False)
    base = _measures(drape, drape(drape.constrain(code[None]), betas).points[0], betas)
    names, dirs = [], []
    for v in vt[:NEURAL_DIRECTIONS]:
        moved = _measures(drape, drape(drape.constrain((code + eps * v)[None]), betas).points[0], betas)
        effect = {k: (moved[k] - base[k]) / max(abs(base[k]), 1e-3) for k in base}
        order = sorted(effect, key=lambda k: -abs(effect[k]))
        name = next((k for k in order if k not in names), f"direction{len(names) + 1}")
        names.append(name)
        dirs.append(v if effect.get(name, 1.0) >= 0 else -v)
    return names, torch.stack(dirs)


def neural_sliders(names: list[str]) -> list[Slider]:
    return [Slider(f"outfit.{n}", "outfit", n, -1.0, 1.0, 0.0) for n in names]


class Editor:
    """A result's drape, code, body and sliders, and the points for any slider values."""

    def __init__(self, result_dir: str | Path, device: str = "cpu") -> None:
        self.folder = Path(result_dir)
        self.outfit = load_outfit(result_dir)
        self.drape_id = str(self.outfit["drape"])
        self.body = load_body(str(self.outfit.get("body", "default")), str(self.outfit.get("gender", "neutral")),
                              device=device)
        self.drape = drape_from_id(self.drape_id, self.body)
        self.betas = self.body.betas_tensor(self.outfit["betas"])
        self.code = torch.as_tensor(self.outfit["code"], dtype=torch.float32, device=device).reshape(-1)
        if self.code.shape[0] != self.drape.code_dim:
            raise InputError(f"has {self.code.shape[0]} entries, the {self.drape_id} drape takes {self.drape.code_dim}",
                             file=self.folder / OUTFIT_NPZ, field="code")
        self.neural = not self.drape_id.startswith("parametric")
        if self.neural:
            self.direction_names, self.directions = neural_directions(self.drape, self.code, self.betas)
            self.sliders = neural_sliders(self.direction_names)
        else:
            self.sliders = parametric_sliders(self.drape, self.code)
        offsets = self.outfit.get("offsets")
        self.offsets = None if offsets is None else torch.as_tensor(offsets, dtype=torch.float32, device=device)
        # The result's own points: a result leaves absent pieces out (a sleeveless dress's sleeve
        # stubs, drape/base.py present_points); every slider value keeps that same point set, so
        # per-point data and the add-on's slider tables stay aligned.
        with torch.no_grad():
            keep = present_points(self.drape(self.drape.constrain(self.code[None]), self.betas))
        n = len(self.outfit["points"])
        self.keep = keep if keep is not None and int(keep.sum()) == n else None

    def code_for(self, values: dict[str, float]) -> torch.Tensor:
        """The drape code (D,) with these slider values (names as in self.sliders; others stay)."""
        code = self.code.clone()
        if self.neural:
            for k, s in enumerate(self.sliders):
                code = code + values.get(s.name, s.value) * NEURAL_STEP * self.directions[k]
            return self.drape.constrain(code[None])[0]
        flat = 0
        for s in self.sliders:
            if s.name in values:
                span = s.high - s.low
                f = min(max((values[s.name] - s.low) / span, EDGE), 1 - EDGE)
                code[flat] = math.log(f / (1 - f))
            flat += 1
        return code

    @torch.no_grad()
    def points(self, values: dict[str, float], with_weights: bool = False):
        """(P, 3) rest points for the slider values (free-form offsets of the fit carried over),
        and (P, 24) skin weights when asked."""
        d = self.drape(self.drape.constrain(self.code_for(values)[None]), self.betas,
                       refresh_weights=with_weights)
        rest = d.points[0]
        weights = d.weights[0] if d.weights.dim() == 3 else d.weights
        if self.keep is not None:
            rest, weights = rest[self.keep], weights[self.keep]
        if self.offsets is not None and self.offsets.shape == rest.shape:
            rest = rest + self.offsets
        if not with_weights:
            return rest
        return rest, weights

    def resolve(self, sets: dict[str, float]) -> dict[str, float]:
        """Slider values by full name from user names ("sleeve", "tshirt.sleeve", "looseness"):
        every name must name one slider and every value lie in its range (InputError naming it)."""
        by_name = {s.name: s for s in self.sliders}
        out = {}
        for raw, value in sets.items():
            garment, _, param = raw.rpartition(".")
            param = ALIASES.get(param, param)
            matches = [s for s in self.sliders if s.param == param and (not garment or s.garment == garment)]
            if len(matches) != 1:
                what = "names no slider" if not matches else \
                    f"is ambiguous: say {' or '.join(s.name for s in matches)}"
                raise InputError(f"{raw!r} {what} (this result's sliders: {', '.join(by_name)})", field=raw,
                                 file=self.folder / OUTFIT_NPZ)
            s = matches[0]
            if not (isinstance(value, (int, float)) and math.isfinite(value) and s.low <= value <= s.high):
                raise InputError(f"{value!r} is outside {s.name}'s range {s.low:g}..{s.high:g}", field=raw)
            out[s.name] = float(value)
        return out


def parse_sets(texts: list[str]) -> dict[str, float]:
    """["sleeve=0.4", "tshirt.hem=0.9"] -> {"sleeve": 0.4, ...}; InputError naming a bad one."""
    out = {}
    for text in texts:
        name, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None:
            raise InputError(f"expected NAME=VALUE like sleeve=0.4, got {text!r}", field="--set")
        out[name.strip()] = number
    return out


# -- the table ----------------------------------------------------------------------------------

def _sample_values(s: Slider, count: int) -> np.ndarray:
    """`count` increasing values over the slider's range: count - 1 evenly spaced and the
    result's own value (where the table's difference is exactly zero)."""
    values = np.unique(np.append(np.linspace(s.low, s.high, count - 1), s.value))
    while len(values) < count:                       # the value was a grid point: split the widest gap
        k = int(np.argmax(np.diff(values)))
        values = np.insert(values, k + 1, (values[k] + values[k + 1]) / 2)
    return values


def slider_table(result_dir: str | Path, out: str | Path, samples: int = SAMPLES, progress=None) -> Path:
    """Write OUT (sliders.npz): names (S,), garments (S,), params (S,), low, high, value (S,),
    samples (S, K) increasing slider values (the result's value among them), base (P, 3) float32 the result's rest points, deltas (S, K, P, 3)
    float16 points at each sample minus base, drape, result (the folder)."""
    progress = progress or (lambda stage, i, n: None)
    ed = Editor(result_dir)
    base = ed.points({})
    values = np.stack([_sample_values(s, samples) for s in ed.sliders])
    deltas = np.zeros((len(ed.sliders), samples, base.shape[0], 3), np.float16)
    for i, s in enumerate(ed.sliders):
        progress("sliders", i, len(ed.sliders))
        for k, v in enumerate(values[i]):
            deltas[i, k] = (ed.points({s.name: float(v)}) - base).cpu().numpy()
    progress("sliders", len(ed.sliders), len(ed.sliders))
    return save_npz(out, names=np.array([s.name for s in ed.sliders]), garments=np.array([s.garment for s in ed.sliders]),
                    params=np.array([s.param for s in ed.sliders]),
                    low=np.array([s.low for s in ed.sliders]), high=np.array([s.high for s in ed.sliders]),
                    value=np.array([s.value for s in ed.sliders]), samples=values.astype(np.float32),
                    base=base.cpu().numpy().astype(np.float32), deltas=deltas, drape=np.array(ed.drape_id),
                    result=np.array(str(Path(result_dir).resolve())))


# -- edit -----------------------------------------------------------------------------------------

@torch.no_grad()
def edit_result(result_dir: str | Path, out: str | Path, sets: dict[str, float]) -> dict:
    """A new result folder OUT with the slider values `sets` (user names, validated): outfit.npz
    (exact drape, new code and skin weights; colours, descriptors, offsets carried over), the
    subject's frames re-posed in posed.npz, body.npz, result.json naming the edit. Returns
    {name: value} as applied."""
    ed = Editor(result_dir)
    values = ed.resolve(sets)
    out = Path(out)
    if out.resolve() == ed.folder.resolve():
        raise InputError("the edit must go to a new folder, not the result itself", field="--out", file=out)
    rest, weights = ed.points(values, with_weights=True)
    code = ed.code_for(values)
    outfit = ed.outfit
    keep = {k: outfit[k] for k in ("faces", "garment", "garment_names", "body", "gender", "colors", "descriptors",
                                   "offsets") if k in outfit}
    params = ed.drape.describe(code) if hasattr(ed.drape, "describe") else None
    posed_in = ed.folder / POSED_NPZ
    posed = None
    if posed_in.is_file():
        p = load_npz(posed_in, {"points": 3 * 2_000_000 * 1000})
        t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        points = ed.body.pose_points(rest[None], weights, ed.betas, t(p["global_orient"]), t(p["body_pose"]),
                                     t(p["transl"]))
        posed = {**{k: v for k, v in p.items() if k != "points"}, "points": points.numpy().astype(np.float32)}
    out.mkdir(parents=True, exist_ok=True)
    save_npz(out / OUTFIT_NPZ, points=rest.numpy().astype(np.float32), weights=weights.numpy().astype(np.float32),
             code=code.numpy().astype(np.float32), drape=outfit["drape"], betas=outfit["betas"],
             params=np.array(json.dumps(params)), **keep)
    if posed is not None:
        save_npz(out / POSED_NPZ, **posed)
    if (ed.folder / BODY_NPZ).is_file():
        shutil.copyfile(ed.folder / BODY_NPZ, out / BODY_NPZ)
    with atomic_path(out / RESULT_JSON) as tmp:
        Path(tmp).write_text(json.dumps({"edited_from": str(ed.folder.resolve()), "set": values,
                                         "garments": params}, indent=1))
    return values


__all__ = ["Editor", "Slider", "edit_result", "parse_sets", "slider_table", "SLIDERS_NPZ"]
