"""Procedural solid textures evaluated at each surface point's rest-pose position, so a
pattern sticks to the cloth however the body moves (no UVs needed)."""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np
import torch

PATTERNS = ("stripes", "checks", "print", "solid")


@dataclass
class Texture:
    pattern: str
    colors: np.ndarray                    # (k, 3) RGB in [0, 1]
    period: float = 0.05                  # metres
    direction: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))
    waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # print: (freq xyz, phase)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(M, 3) rest positions -> (M, 3) colours."""
        colors = torch.as_tensor(self.colors, dtype=points.dtype, device=points.device)
        if self.pattern == "solid":
            out = colors[0].expand(points.shape[0], 3)
        elif self.pattern == "stripes":
            d = torch.as_tensor(self.direction, dtype=points.dtype, device=points.device)
            t = torch.remainder(points @ d / self.period, 1.0)
            out = torch.where((t < 0.5)[:, None], colors[0], colors[1])
        elif self.pattern == "checks":
            cells = torch.floor(points / self.period).long().sum(1) % 2
            out = colors[cells]
        else:
            w = torch.as_tensor(self.waves, dtype=points.dtype, device=points.device)
            value = torch.sin(points @ w[:, :3].T + w[:, 3]).sum(1) / np.sqrt(len(self.waves))
            level = torch.bucketize(value, torch.tensor([-0.35, 0.45], dtype=points.dtype, device=points.device))
            out = colors[level]
        grain = 0.04 * torch.sin(points @ torch.tensor([311.0, 173.0, 229.0], dtype=points.dtype, device=points.device))
        return (out * (1 + grain[:, None])).clamp(0, 1)


def random_color(rng: np.random.Generator, value: tuple[float, float] = (0.25, 0.95)) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(*value)))


def random_texture(rng: np.random.Generator) -> Texture:
    pattern = str(rng.choice(PATTERNS, p=[0.3, 0.25, 0.3, 0.15]))
    base = random_color(rng)
    second = np.clip(1.0 - base * rng.uniform(0.3, 1.0), 0, 1) if rng.uniform() < 0.5 else random_color(rng)
    colors = np.stack([base, second, random_color(rng)])
    direction = [np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]),
                 np.array([0.7, 0.7, 0.0])][rng.integers(3)]
    waves = np.concatenate([rng.normal(0, 40, (6, 3)), rng.uniform(0, 2 * np.pi, (6, 1))], 1)
    return Texture(pattern, colors, period=float(rng.uniform(0.025, 0.09)), direction=direction, waves=waves)


SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.89, 0.67, 0.52], [0.78, 0.57, 0.43],
                       [0.62, 0.43, 0.30], [0.45, 0.30, 0.20], [0.33, 0.22, 0.15]])


def random_skin(rng: np.random.Generator) -> np.ndarray:
    a, b = rng.integers(len(SKIN_TONES), size=2)
    t = rng.uniform()
    return SKIN_TONES[a] * (1 - t) + SKIN_TONES[b] * t


def background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) a soft two-colour gradient with blotches: a plausible, varied backdrop."""
    h, w = size
    c0, c1 = random_color(rng, (0.3, 0.9)), random_color(rng, (0.2, 0.8))
    y = np.linspace(0, 1, h)[:, None, None]
    img = c0 * (1 - y) + c1 * y
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    blotch = sum(np.sin(rng.uniform(3, 12) * xx + rng.uniform(3, 12) * yy + rng.uniform(0, 6)) for _ in range(3))
    return np.clip(img * (1 + 0.06 * blotch[..., None]), 0, 1).astype(np.float32)
