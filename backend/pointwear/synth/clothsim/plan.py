"""What one clothsim subject is (no bpy): the outfit drawn from the seed, how it looks, the
body's motion per simulation frame and the camera per output frame. Options live in one place
(`ClothsimOptions`), and so do the outfit names and seed ranges."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..motion import MOTIONS, make_motion
from ..texture import random_color
from .patterns import KINDS, GarmentSpec

# Outfits: every kind alone, and combinations listed inner layer first (a jacket over a
# T-shirt is "tshirt+jacket"; a shirt is worn over the trousers' waistband).
COMBINATIONS = ("tshirt+trousers", "tank+skirt", "tshirt+jacket", "tshirt+jacket+trousers", "longsleeve+shorts")
OUTFITS = KINDS + COMBINATIONS
# Seeds: training and evaluation never share one (never tune on the evaluation seeds).
TRAIN_SEEDS = range(0, 100)
EVAL_SEEDS = range(1000, 1100)
PATTERNS = ("solid", "stripes", "checks", "print")
# Blender world = the body's SMPL frame turned Z-up: (x, y, z)_blender = (x, -z, y)_smpl.
SMPL_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclass
class ClothsimOptions:
    """Every tuning number of the clothsim generator."""
    frames: int = 8                 # output frames after the settle
    size: int = 256                 # image side in pixels (256 or 512 are the documented sizes)
    samples: int = 16               # Cycles samples per pixel (denoised)
    motion: str = "random"          # "turntable" | "walk" | "random" (from the seed)
    res: float = 0.02               # cloth edge length (m)
    settle: int = 14                # simulation frames before the first output frame
    substeps: int = 4               # simulation frames per output frame of a walk
    turntable_substeps: int = 1     # ... of a turntable (only the camera moves)
    quality: int = 5                # cloth solver steps per frame
    collision_quality: int = 3
    points: int = 8192              # truth points on the cloth per frame
    fps: float = 6.0                # output frame rate: 8 frames of a walk are 1.3 s (1-2 gait
                                    # cycles); the simulation runs at fps * substeps
    threads: int = 2

    def check(self) -> None:
        if not 1 <= self.frames <= 240:
            raise ValueError(f"--frames must be within 1..240, got {self.frames}")
        if not 32 <= self.size <= 2048:
            raise ValueError(f"--size must be within 32..2048 pixels, got {self.size}")
        if not 1 <= self.samples <= 4096:
            raise ValueError(f"--samples must be within 1..4096, got {self.samples}")
        if self.motion not in (*MOTIONS, "random"):
            raise ValueError(f"--motion must be one of {[*MOTIONS, 'random']}, got {self.motion!r}")
        if not 0.008 <= self.res <= 0.08:
            raise ValueError(f"--res must be within 0.008..0.08 m, got {self.res}")
        if self.settle < 2 or min(self.substeps, self.turntable_substeps, self.quality, self.points) < 1:
            raise ValueError("settle >= 2, substeps >= 1, quality >= 1 and points >= 1 are required")


def outfit_kinds(outfit: str) -> list[str]:
    """"tshirt+jacket" -> ["tshirt", "jacket"]; a clear error for unknown names."""
    if outfit not in OUTFITS:
        raise ValueError(f"unknown outfit {outfit!r}; known: {', '.join(OUTFITS)}")
    return outfit.split("+")


def sample_garments(outfit: str, rng: np.random.Generator) -> list[GarmentSpec]:
    """The seed's garments, each with its interpretable numbers; layers: lower garments
    innermost, then shirts, then jackets."""
    kinds = outfit_kinds(outfit)
    order = {"shorts": 0, "trousers": 0, "skirt": 0, "tank": 1, "tshirt": 1, "longsleeve": 1, "dress": 1, "jacket": 2}
    specs = []
    for kind in kinds:
        flare = {"skirt": rng.uniform(0.0, 0.9), "dress": rng.uniform(0.05, 0.6),
                 "trousers": rng.uniform(0.0, 0.08), "shorts": rng.uniform(0.0, 0.15)}.get(kind, 0.0)
        ease = rng.uniform(0.012, 0.03) + (0.012 if kind == "jacket" else 0.0)
        specs.append(GarmentSpec(kind=kind, ease=float(ease), length=float(rng.uniform()), flare=float(flare),
                                 sleeve=float(rng.uniform()), neckline=float(rng.uniform(0.05, 0.13)),
                                 layer=order[kind]))
    layers = sorted({s.layer for s in specs})
    for s in specs:   # outer layers start outside the inner ones
        s.layer = layers.index(s.layer)
        s.ease += 0.014 * s.layer
    return specs


@dataclass
class Look:
    """Colours and textures: per garment a pattern (on the pattern's UVs, metres), colours and
    period; the skin tone, hair colour, background colours, light direction and strength."""
    patterns: list[str]
    colors: list[np.ndarray]        # per garment (3, 3) RGB
    periods: list[float]
    directions: list[int]           # stripes: 0 across, 1 down, 2 diagonal
    skin: np.ndarray
    hair: np.ndarray
    sun: np.ndarray                 # (3,) direction the light comes from (Blender world)
    sun_strength: float
    ambient: float


def sample_look(n_garments: int, rng: np.random.Generator) -> Look:
    from ..texture import random_skin
    patterns = [str(rng.choice(PATTERNS, p=[0.25, 0.3, 0.25, 0.2])) for _ in range(n_garments)]
    colors = []
    for _ in range(n_garments):
        base = random_color(rng)
        colors.append(np.stack([base, np.clip(1.0 - base * rng.uniform(0.3, 1.0), 0, 1), random_color(rng)]))
    az, el = rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 1.2)
    sun = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    return Look(patterns=patterns, colors=colors, periods=[float(rng.uniform(0.02, 0.07)) for _ in range(n_garments)],
                directions=[int(rng.integers(3)) for _ in range(n_garments)], skin=random_skin(rng),
                hair=np.array([0.12, 0.08, 0.05]) * rng.uniform(0.6, 2.5), sun=sun,
                sun_strength=float(rng.uniform(2.5, 4.5)), ambient=float(rng.uniform(0.35, 0.7)))


@dataclass
class MotionPlan:
    """Body poses per simulation frame (T, 24, 3) axis-angle (root identity: the body stays
    put and the camera moves), the simulation frames that are output (n,), camera yaw (n,)
    degrees, the motion's name and simulation frames per output frame."""
    poses: np.ndarray
    output_frames: np.ndarray
    yaw: np.ndarray
    motion: str
    substeps: int


def motion_plan(options: ClothsimOptions, rng: np.random.Generator) -> MotionPlan:
    """The settle holds the motion's first pose (the garments start there, skinned from their
    T-pose placement), then the motion, sampled `substeps` times per output frame."""
    motion = options.motion if options.motion != "random" else str(rng.choice(MOTIONS))
    n = options.frames
    sub = options.turntable_substeps if motion == "turntable" else options.substeps
    yaw_fine, pose_fine = make_motion(motion, n * sub, rng)
    poses = np.concatenate([np.repeat(pose_fine[:1], options.settle, 0), pose_fine])
    poses[:, 0] = 0.0
    output = options.settle + sub * np.arange(n) + (sub - 1)
    return MotionPlan(poses=poses, output_frames=output, yaw=yaw_fine[sub - 1::sub][:n], motion=motion, substeps=sub)
