"""Which garments a fit tries. With per-garment labels (labels/ from `pointwear prepare`, the
synthetic generator or the user), each label is its own sub-problem: the families its name allows
are fitted to that label's mask alone, the best of each label kept, and the winners joined into
one outfit for the fine stage, every garment still scored against its own label. Without labels,
whole outfits (single garments, tops over bottoms, jackets over both) compete on the clothing
mask, with a complexity penalty, and most are pruned early in the coarse stage."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..data.subject import LABELS_DIR, SUBJECT_JSON, Subject, image_name
from ..errors import InputError
from ..garment.families import FAMILIES, SLOTS, Family, families_for, outfit_name, outfit_problem

UNION = -1      # target key of the whole clothing mask (no labels)


@dataclass(frozen=True)
class CandidateSpec:
    """An outfit to try and the mask each of its garments is scored against (a label id, or
    UNION), garments in the drape's order (inner layer first)."""
    outfit: str
    targets: tuple[int, ...]

    @property
    def key(self) -> str:
        groups = sorted(set(self.targets))
        return self.outfit if groups == [UNION] else f"{self.outfit}@{'+'.join(map(str, groups))}"


@dataclass(frozen=True)
class LabelGroup:
    label: int
    name: str
    families: tuple[Family, ...]


def _layered(families: tuple[Family, ...]) -> list[tuple[Family, ...]]:
    """Single garments, and a jacket over each other top, for one label's family list."""
    out = [(f,) for f in families]
    if "jacket" in [f.name for f in families]:
        out += [(FAMILIES["jacket"], f) for f in families if f.slot == "upper" and f.layer == 1]
    return out


def label_groups(subject: Subject, frames: list[int]) -> list[LabelGroup]:
    """The labels to fit separately: every label id named in subject.json "labels" that marks
    pixels in at least one of `frames`. Ids found in the images but not named are refused,
    naming the first file that holds one."""
    names = subject.label_names
    meta_file = subject.root / SUBJECT_JSON
    if not names:
        raise InputError('labels/ is present but subject.json has no "labels" naming its ids '
                         '(e.g. {"1": "upper", "2": "lower"})', file=meta_file, field="labels")
    groups, seen = [], set()
    for i in frames:
        labels = subject.labels(i)
        outside = float(((labels > 0) & ~subject.mask(i)).sum()) / max(1, int((labels > 0).sum()))
        if outside > 0.05:
            warnings.warn(f"{subject.root / LABELS_DIR / image_name(i)}: {outside:.0%} of the labelled pixels lie "
                          "outside the clothing mask (masks/); garments are fitted to their labels as given")
        ids = np.unique(labels)
        unknown = [int(v) for v in ids if v != 0 and int(v) not in names]
        if unknown:
            raise InputError(f"label ids {unknown} are not named in subject.json \"labels\" "
                             f"({sorted(names)})", file=subject.root / LABELS_DIR / image_name(i))
        seen.update(int(v) for v in ids if v != 0)
    for label, name in sorted(names.items()):
        try:
            families = families_for(name)
        except ValueError as exc:
            raise InputError(str(exc), file=meta_file, field=f"labels.{label}") from None
        if label in seen:
            groups.append(LabelGroup(label, name, families))
    if not groups:
        raise InputError("no labelled pixel in the frames to fit", file=subject.root / LABELS_DIR)
    return groups


def labelled_candidates(groups: list[LabelGroup]) -> list[CandidateSpec]:
    """Per label, each family it allows (a slot label also a jacket over a top)."""
    return [CandidateSpec(outfit_name(fams), (g.label,) * len(fams))
            for g in groups for fams in _layered(g.families)]


def unlabelled_candidates() -> list[CandidateSpec]:
    """Whole outfits scored on the clothing mask: every garment alone, every top over every
    bottom, a jacket over a one-piece, and a jacket over a top over each bottom."""
    by_slot = {s: [f for f in FAMILIES.values() if f.slot == s] for s in SLOTS}
    tops = [f for f in by_slot["upper"] if f.layer == 1]
    jacket = FAMILIES["jacket"]
    sets: list[tuple[Family, ...]] = [(f,) for f in FAMILIES.values()]
    sets += [(u, b) for u in by_slot["upper"] for b in by_slot["lower"]]
    sets += [(jacket, o) for o in by_slot["onepiece"]]
    sets += [(jacket, t, b) for t in tops for b in by_slot["lower"] if t.name in ("tshirt", "longsleeve")]
    return [CandidateSpec(outfit_name(s), (UNION,) * len(s)) for s in sets if outfit_problem(s) is None]


def join_winners(winners: list[tuple[CandidateSpec, float]]) -> tuple[CandidateSpec, list[str]]:
    """One outfit from the best candidate of each label (`winners`: spec and score, best
    first). A garment that cannot be worn with those already taken (a lower garment beside a
    one-piece) is left out with a warning; returns the joined spec and the warnings."""
    from ..garment.families import outfit_families
    taken: list[tuple[Family, int]] = []
    warnings: list[str] = []
    for spec, _ in winners:
        fams = outfit_families(spec.outfit)
        trial = tuple(f for f, _ in taken) + fams
        if outfit_problem(trial):
            warnings.append(f"label {spec.targets[0]}: {spec.outfit} cannot be worn with "
                            f"{outfit_name(tuple(f for f, _ in taken))} ({outfit_problem(trial)}); left out")
            continue
        taken += [(f, t) for f, t in zip(fams, spec.targets)]
    families = outfit_families(outfit_name(tuple(f for f, _ in taken)))   # inner layer first
    target = {f.name: t for f, t in taken}
    return CandidateSpec(outfit_name(families), tuple(target[f.name] for f in families)), warnings


PLAIN_TOPS = ("tank", "tshirt", "longsleeve")   # tops that differ only in their sleeves


def hidden_top(params: list[dict], allowed: list[bool], margin: float) -> int | None:
    """Index of the plain top (tank, T-shirt, long sleeve) worn under a jacket whose sleeves end
    inside the jacket's (its sleeve no longer than the jacket's + `margin`, a share of the arm;
    a tank has none), so no frame can show them and the masks cannot tell the three apart;
    None when there is none. `params`: the outfit's garments as `ParametricDrape.describe` gives
    them (inner layer first); `allowed[g]`: garment g's family may be replaced (its label names
    a slot or nothing, not the family itself)."""
    names = [p["name"] for p in params]
    if "jacket" not in names:
        return None
    jacket = params[names.index("jacket")]["sleeve"]
    for g, p in enumerate(params):
        if p["name"] in PLAIN_TOPS and allowed[g] and p.get("sleeve", 0.0) <= jacket + margin:
            return g
    return None


def replace_family(outfit: str, code, g: int, family: str, keep_default: tuple[str, ...] = ("sleeve",)):
    """(outfit spec, (D,) code) with garment g of `outfit` (inner layer first) replaced by
    `family`: every parameter the two share keeps its value (clamped into the new range), the
    ones named in `keep_default` and the new family's own start at the middle of their range
    (logit 0). `code` a (D,) tensor; the result on its device and dtype."""
    import torch
    from ..garment.families import outfit_families
    families = outfit_families(outfit)
    new = tuple(FAMILIES[family] if k == g else f for k, f in enumerate(families))
    bounds = np.cumsum([0] + [f.code_dim for f in families])
    parts = []
    for k, (old, fam) in enumerate(zip(families, new)):
        seg = code[int(bounds[k]):int(bounds[k + 1])]
        if k != g:
            parts.append(seg)
            continue
        values = {name: lo + (hi - lo) * torch.sigmoid(seg[i]) for i, (name, lo, hi) in enumerate(old.ranges)}
        logits = []
        for name, lo, hi in fam.ranges:
            if name in values and name not in keep_default:
                share = ((values[name] - lo) / (hi - lo)).clamp(0.02, 0.98)
                logits.append(torch.log(share / (1 - share)))
            else:
                logits.append(torch.zeros((), dtype=code.dtype, device=code.device))
        parts.append(torch.stack(logits))
    order = outfit_families(outfit_name(new))        # the new outfit's own order (inner first)
    by_name = {f.name: p for f, p in zip(new, parts)}
    return outfit_name(new), torch.cat([by_name[f.name] for f in order])


def assign_labels(outfit: str, groups: list[LabelGroup]) -> CandidateSpec:
    """Fixed garments on a labelled subject: each garment is scored against the label named
    after it, else the label of its slot; a garment with neither is scored on the whole
    clothing mask."""
    from ..garment.families import outfit_families
    targets = []
    for fam in outfit_families(outfit):
        named = [g.label for g in groups if g.name == fam.name]
        slot = [g.label for g in groups if fam.slot in {f.slot for f in g.families}]
        if not (named or slot):
            warnings.warn(f"--garments {outfit}: no label of the subject is a {fam.slot} garment "
                          f"({', '.join(f'{g.label}={g.name}' for g in groups)}), so {fam.name} is fitted to the "
                          "whole clothing mask")
        targets.append((named or slot or [UNION])[0])
    return CandidateSpec(outfit, tuple(targets))

