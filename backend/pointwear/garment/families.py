"""Garment families: the vocabulary of compositional outfits. An outfit is a set of garments,
each from a family with its own code (the logits of its interpretable parameters); families sit
in slots (upper, lower, one-piece) and layers (a jacket over a shirt). This module is the one
definition of families, slots, layering and the legacy four-template outfits; geometry lives in
`outfit.py`, the differentiable code -> parameters map in `drape/parametric.py`."""
from __future__ import annotations

from dataclasses import dataclass, field

SLOTS = ("upper", "lower", "onepiece")
Range = tuple[str, float, float]          # (parameter, low, high): a logit maps into [low, high]


@dataclass(frozen=True)
class Family:
    """One garment family. `kind` is the geometry builder (outfit.garment_pieces); `ranges`
    the parameters its code holds, in order; `fixed` parameters it never changes; `layer` the
    stacking order (higher is worn over lower: a jacket over a T-shirt over trousers)."""
    name: str
    slot: str
    kind: str
    ranges: tuple[Range, ...]
    fixed: dict = field(default_factory=dict)
    layer: int = 0

    @property
    def code_dim(self) -> int:
        return len(self.ranges)


_DRESS = (("sleeve", 0.0, 0.5), ("hem", 0.05, 0.9), ("neckline", 0.02, 0.14), ("ease", 0.003, 0.05),
          ("flare", 0.0, 0.6))
_TOP = (("hem", 0.5, 1.05), ("neckline", 0.02, 0.14), ("ease", 0.003, 0.06), ("loose", 0.0, 0.3))
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("tank", "upper", "top", (("hem", 0.5, 1.05), ("neckline", 0.05, 0.16), ("ease", 0.003, 0.06),
                                    ("loose", 0.0, 0.3), ("armhole", 0.0, 0.2), ("strap", 0.4, 1.0),
                                    ("taper", 0.0, 0.6)),
           {"sleeve": 0.0}, layer=1),
    Family("tshirt", "upper", "top", (("sleeve", 0.08, 0.55),) + _TOP, layer=1),
    Family("longsleeve", "upper", "top", (("sleeve", 0.55, 1.02),) + _TOP, layer=1),
    Family("hoodie", "upper", "hoodie", (("sleeve", 0.6, 1.02), ("hem", 0.6, 1.1), ("ease", 0.01, 0.07),
                                         ("hood", 0.4, 1.0), ("loose", 0.0, 0.3)), {"neckline": 0.03}, layer=1),
    Family("jacket", "upper", "jacket", (("sleeve", 0.6, 1.02), ("hem", 0.6, 1.25), ("neckline", 0.02, 0.12),
                                         ("ease", 0.012, 0.08), ("opening", 0.0, 1.4), ("loose", 0.0, 0.3),
                                         ("widen", 0.0, 1.2)),
           layer=2),
    Family("shorts", "lower", "trousers", (("hem", 0.12, 0.6), ("waist", 0.5, 0.75), ("ease", 0.003, 0.06),
                                           ("flare", 0.0, 0.2))),
    Family("trousers", "lower", "trousers", (("hem", 0.6, 1.02), ("waist", 0.5, 0.75), ("ease", 0.003, 0.06),
                                             ("flare", 0.0, 0.2))),
    Family("skirt", "lower", "skirt", (("hem", 0.05, 0.95), ("waist", 0.5, 0.7), ("ease", 0.003, 0.05),
                                       ("flare", 0.0, 0.8), ("fall", 0.0, 0.3))),
    Family("dress", "onepiece", "dress", _DRESS + (("armhole", 0.0, 0.2), ("strap", 0.4, 1.0), ("fall", 0.0, 0.3),
                                                   ("taper", 0.0, 0.6))),
    Family("jumpsuit", "onepiece", "jumpsuit", (("sleeve", 0.0, 1.02), ("hem", 0.15, 1.0), ("neckline", 0.02, 0.12),
                                                ("ease", 0.003, 0.06))),
)}

# Parameters appended to families after results were first written with them, one generation
# after another (oldest first): an older code lacks those of its own generation and of every later
# one and reads them at the low end of their range (`upgrade_code`).
ADDED_LATER_GENERATIONS: tuple[dict[str, tuple[str, ...]], ...] = (
    {"shorts": ("flare",), "trousers": ("flare",), "tank": ("loose",), "tshirt": ("loose",),
     "longsleeve": ("loose",), "hoodie": ("loose",), "jacket": ("loose",)},
    {"dress": ("armhole", "strap"), "jacket": ("widen",)},
    {"skirt": ("fall",), "dress": ("fall",)},
    {"tank": ("armhole", "strap")},
    {"tank": ("taper",), "dress": ("taper",)},
)
ADDED_LATER: dict[str, tuple[str, ...]] = {
    name: tuple(p for gen in ADDED_LATER_GENERATIONS for p in gen.get(name, ()))
    for name in dict.fromkeys(n for gen in ADDED_LATER_GENERATIONS for n in gen)}
ABSENT_LOGIT = -12.0      # sigmoid(-12) = 6e-6: the low end of the range (a straight leg, a fitted top)
# Parameters the fit's coarse stage holds at the low end of their range (ABSENT_LOGIT, no
# random draw, no gradient), so choosing the garments goes as it did without them; the fine
# stage starts them at FINE_START_LOGIT and fits them with the rest. A jacket's `widen` moves
# which top under it the coarse stage prefers (docs/fitting.md, "Jackets"); a skirt's or dress's
# `fall` is held the same way, so the garments chosen stay those of before it, and so are a tank's
# armholes (cut deep on simulated tanks, docs/fitting.md "The outfit model").
FINE_ONLY: dict[str, tuple[str, ...]] = {"jacket": ("widen",), "skirt": ("fall",), "dress": ("fall", "taper"),
                                         "tank": ("armhole", "strap", "taper")}
FINE_START_LOGIT = 0.0    # the middle of the range
# Parameters that act only through which points are there (a cut: a sleeveless garment's
# armholes), not through where the points lie. The mask -> points Chamfer counts a point as there
# or not, so Adam gets almost no gradient for them: on clothsim training tanks and dresses the
# straps drifted in from the middle of their range while wider straps and deeper armholes had a
# lower training loss. The fine stage starts them from the best combination of a few values
# (`FitOptions.cut_grid`) by the training frames' loss (docs/fitting.md, "Cuts").
CUT_PARAMS: dict[str, tuple[str, ...]] = {"tank": ("armhole", "strap", "taper"), "dress": ("armhole", "strap", "taper")}


def upgrade_code(spec: str, code):
    """A family outfit's code of an older result (without the parameters of one generation of
    ADDED_LATER_GENERATIONS and the later ones) in today's layout: each garment's missing
    trailing logits set to ABSENT_LOGIT. Codes already in today's layout, or of a length no
    generation had, are returned unchanged. (D,) numpy array."""
    import numpy as np
    code = np.asarray(code, np.float32).reshape(-1)
    try:
        families = outfit_families(spec)
    except ValueError:
        return code
    for first in range(len(ADDED_LATER_GENERATIONS)):          # written before generation `first`
        missing = [sum(len(gen.get(f.name, ())) for gen in ADDED_LATER_GENERATIONS[first:]) for f in families]
        old = [f.code_dim - m for f, m in zip(families, missing)]
        if len(code) == sum(old) and sum(missing) > 0:
            return _with_absent(families, old, code)
    return code


def _with_absent(families, old: list[int], code):
    """`code` (sum(old),) with each garment's trailing logits beyond its `old` count set to
    ABSENT_LOGIT: (sum of code_dim,) numpy array."""
    import numpy as np
    parts, start = [], 0
    for fam, n in zip(families, old):
        parts += [code[start:start + n], np.full(fam.code_dim - n, ABSENT_LOGIT, np.float32)]
        start += n
    return np.concatenate(parts)


# The four fixed outfits of results made before families existed: their geometry kinds and the
# parameter ranges their codes were fitted with (kept exactly, so old results re-drape the same).
LEGACY_RANGES: dict[str, tuple[Range, ...]] = {
    "top": (("sleeve", 0.0, 1.0), ("hem", 0.5, 1.05), ("neckline", 0.02, 0.14), ("ease", 0.003, 0.06)),
    "trousers": (("hem", 0.15, 1.0), ("waist", 0.5, 0.75), ("ease", 0.003, 0.06)),
    "skirt": (("hem", 0.05, 0.9), ("waist", 0.5, 0.7), ("ease", 0.003, 0.05), ("flare", 0.0, 0.6)),
    "dress": _DRESS,
}
LEGACY_OUTFITS: dict[str, tuple[str, ...]] = {
    "tshirt-shorts": ("top", "trousers"),
    "longsleeve-trousers": ("top", "trousers"),
    "tank-skirt": ("top", "skirt"),
    "dress": ("dress",),
}
_LEGACY_SLOT = {"top": "upper", "trousers": "lower", "skirt": "lower", "dress": "onepiece"}
LEGACY_FAMILIES: dict[str, Family] = {
    kind: Family(kind, _LEGACY_SLOT[kind], kind, ranges, layer=1 if kind == "top" else 0)
    for kind, ranges in LEGACY_RANGES.items()}


def outfit_families(spec: str) -> tuple[Family, ...]:
    """The families of an outfit spec, inner layer first: a legacy outfit name
    ("tshirt-shorts") or family names joined by "+" ("jacket+tshirt+trousers", any order)."""
    if spec in LEGACY_OUTFITS and spec not in FAMILIES:
        return tuple(LEGACY_FAMILIES[k] for k in LEGACY_OUTFITS[spec])
    names = [n.strip() for n in spec.split("+")]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown garment {', '.join(map(repr, unknown)) or repr(spec)}: a garment is one of "
                         f"{', '.join(FAMILIES)}, joined by '+' (or a legacy outfit {', '.join(LEGACY_OUTFITS)})")
    families = tuple(FAMILIES[n] for n in names)
    problem = outfit_problem(families)
    if problem:
        raise ValueError(f"outfit {spec!r}: {problem}")
    return tuple(sorted(families, key=lambda f: (f.layer, SLOTS.index(f.slot))))


def outfit_problem(families: tuple[Family, ...]) -> str | None:
    """Why this set of garments is not a wearable outfit (None when it is): at most one
    garment per layer of a slot, and no lower garment together with a one-piece."""
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        return "a garment appears twice"
    by = lambda slot, layer=None: [f for f in families if f.slot == slot and (layer is None or f.layer == layer)]  # noqa: E731
    if len(by("lower")) > 1 or len(by("onepiece")) > 1:
        return "at most one lower garment and one one-piece"
    if by("lower") and by("onepiece"):
        return "a lower garment and a one-piece cannot be worn together"
    if len(by("upper", 1)) > 1 or len(by("upper", 2)) > 1:
        return "at most one top and one jacket (worn over it)"
    if by("onepiece") and by("upper", 1):
        return "a top and a one-piece cannot be combined (a jacket over a one-piece can)"
    return None


def outfit_name(families: tuple[Family, ...]) -> str:
    """Canonical spec of an outfit: outer layer first ("jacket+tshirt+trousers")."""
    return "+".join(f.name for f in sorted(families, key=lambda f: (-f.layer, SLOTS.index(f.slot))))


def families_for(slot_or_name: str) -> tuple[Family, ...]:
    """Families a label can mean: a family name names itself, a slot its families; a legacy
    garment name of the synthetic generator maps to its family."""
    if slot_or_name in FAMILIES:
        return (FAMILIES[slot_or_name],)
    if slot_or_name in SLOTS:
        return tuple(f for f in FAMILIES.values() if f.slot == slot_or_name)
    if slot_or_name in LEGACY_FAMILIES:
        return families_for(LEGACY_FAMILIES[slot_or_name].slot)
    raise ValueError(f"label name {slot_or_name!r} is neither a garment ({', '.join(FAMILIES)}) "
                     f"nor a slot ({', '.join(SLOTS)})")


def outfit_spec_error(spec: object, allow_random: bool = False) -> str | None:
    """Why `spec` is not an outfit (None when it is): a legacy outfit name, garments joined
    by '+', or (`allow_random`) "random"."""
    if not isinstance(spec, str) or not 0 < len(spec) <= 200:
        return f"must be garments joined by '+', got {spec!r:.60}"
    if allow_random and spec == "random":
        return None
    try:
        outfit_families(spec)
    except ValueError as exc:
        return str(exc)
    return None
