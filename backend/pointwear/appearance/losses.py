"""Losses and metrics for fitting appearance (descriptors + rendering network).

Images are (B, C, H, W) in [-1, 1] (the network's tanh range), masks (B, 1, H, W) in [0, 1].

Losses: `masked_l1`, `ssim` / `ssim_loss` (Gaussian-window SSIM of Wang et al. 2004, our own:
11 x 11 window, sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' filtering -- the same definition as
pytorch_msssim's `ssim`, without the dependency), `dice_loss` (the paper's -log Dice), and
`VGGPerceptual` (the paper's main image loss: L1 between VGG19 ReLU activations, weights loaded
from a local file).

Metrics (no gradients needed, per image): `psnr` and `masked_ssim` restricted to a mask, and
`mask_iou`. How the mask restricts them: both are *weighted by the mask* -- PSNR from the mean
squared error over the mask's pixels, SSIM as the mean of the SSIM map over the mask's pixels
(each map value is the SSIM of the 11 x 11 window centred there, so windows on the mask's edge
also see a few background pixels). No cropping to the bounding box: the result then does not
depend on how much background surrounds the garment. An empty mask gives NaN (nothing was
compared), never a perfect score.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..fit.metrics import mask_iou as _bool_mask_iou

__all__ = ["masked_l1", "ssim", "ssim_map", "ssim_loss", "dice_loss", "VGGPerceptual",
           "VGG19_LAYERS", "psnr", "masked_ssim", "mask_iou"]


# ----------------------------------------------------------------------------- helpers

def _check_pair(x: Tensor, y: Tensor, name: str) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"{name}: expected two (B,C,H,W) tensors of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")


def _mask_weights(mask: Tensor | None, like: Tensor, name: str) -> Tensor:
    """Mask as float (B,1,H,W) weights on like's device/dtype (all ones when None)."""
    B, _, H, W = like.shape
    if mask is None:
        return torch.ones(B, 1, H, W, dtype=like.dtype, device=like.device)
    m = mask
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[-2:] != (H, W) or m.shape[0] not in (1, B):
        raise ValueError(f"{name}: mask must be (B,1,H,W) or (B,H,W) matching "
                         f"{tuple(like.shape)}, got {tuple(mask.shape)}")
    return m.to(device=like.device, dtype=like.dtype).expand(B, 1, H, W)


# ----------------------------------------------------------------------------- L1

def masked_l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error over the masked pixels (mask = weights in [0, 1], broadcast over
    channels): sum(m * |pred - target|) / (C * sum(m)). Scalar; 0 for an empty mask."""
    _check_pair(pred, target, "masked_l1")
    m = _mask_weights(mask, pred, "masked_l1")
    num = ((pred - target).abs() * m).sum()
    den = m.sum() * pred.shape[1]
    return num / den.clamp(min=1e-12)


# ----------------------------------------------------------------------------- SSIM

def _gaussian_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter, per channel, 'valid' (no padding)."""
    C = x.shape[1]
    n = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, n).expand(C, 1, 1, n), groups=C)
    return F.conv2d(x, g.view(1, 1, n, 1).expand(C, 1, n, 1), groups=C)


def ssim_map(x: Tensor, y: Tensor, value_range: tuple[float, float] = (-1.0, 1.0),
             win_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
             k2: float = 0.03) -> Tensor:
    """Per-pixel SSIM (B, C, H - win_size + 1, W - win_size + 1) with a Gaussian window.

    value_range: (lo, hi) of the images' values, (-1, 1) for the network's tanh output. SSIM's
    luminance term is not shift-invariant, so images are first shifted to [0, hi - lo] (the
    usual convention: same numbers as pytorch_msssim / scikit-image on [0, 1] images with
    data_range 1). Differentiable.
    """
    _check_pair(x, y, "ssim")
    if win_size % 2 != 1 or win_size < 1:
        raise ValueError(f"ssim: win_size must be odd and positive, got {win_size}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"ssim: images {tuple(x.shape[-2:])} are smaller than the "
                         f"{win_size} x {win_size} window")
    lo, hi = (float(v) for v in value_range)
    data_range = hi - lo
    if not data_range > 0:
        raise ValueError(f"ssim: value_range must have hi > lo, got {value_range}")
    x, y = x - lo, y - lo
    g = _gaussian_1d(win_size, sigma, x.dtype, x.device)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mu_x * mu_x
    syy = _blur(y * y, g) - mu_y * mu_y
    sxy = _blur(x * y, g) - mu_x * mu_y
    luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    contrast_structure = (2.0 * sxy + c2) / (sxx + syy + c2)
    return luminance * contrast_structure


def ssim(x: Tensor, y: Tensor, value_range: tuple[float, float] = (-1.0, 1.0),
         win_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM per image, (B,) (over channels and window positions). 1 for identical
    images. Differentiable."""
    return ssim_map(x, y, value_range, win_size, sigma).flatten(1).mean(1)


def ssim_loss(pred: Tensor, target: Tensor,
              value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """1 - mean SSIM over the batch (scalar)."""
    return 1.0 - ssim(pred, target, value_range).mean()


# ----------------------------------------------------------------------------- Dice

def dice_loss(pred: Tensor, target: Tensor, *, log: bool = True, eps: float = 1e-7) -> Tensor:
    """Dice loss on soft masks, averaged over the batch (scalar).

    dice = 2 sum(p t) / (sum(p^2) + sum(t^2)) per item; the paper minimises -log(dice)
    (``log=True``), else 1 - dice. A perfect mask gives ~0 either way.
    """
    if pred.shape != target.shape:
        raise ValueError(f"dice_loss: shapes differ {tuple(pred.shape)} vs {tuple(target.shape)}")
    p = pred.flatten(1)
    t = target.to(pred.dtype).flatten(1)
    dice = (2.0 * (p * t).sum(1) + eps) / ((p * p).sum(1) + (t * t).sum(1) + eps)
    return (-torch.log(dice.clamp(min=eps))).mean() if log else (1.0 - dice).mean()


# ----------------------------------------------------------------------------- VGG19 perceptual

# torchvision's vgg19().features: (index, in, out) of each 3x3 conv; a ReLU follows each conv,
# 2x2 pools sit at 4, 9, 18, 27, 36.
VGG19_LAYERS: tuple[tuple[int, int, int], ...] = (
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256), (16, 256, 256),
    (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512),
    (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512),
)
_VGG19_POOLS = (4, 9, 18, 27, 36)
_PREPROCESS = ("torchvision", "caffe")


class VGGPerceptual(nn.Module):
    """L1 between VGG19 ReLU activations of prediction and target, summed over the first
    ``n_relus`` ReLUs (the paper: 10, i.e. relu1_1 ... relu4_2), times ``weight``.

    Built by hand (no torchvision) with torchvision's layer indices, so a torchvision VGG19
    state dict (``features.N.weight`` / ``features.N.bias``, or a bare ``N.weight`` features
    dict; classifier keys are ignored) loads as it is. Max pooling is replaced by average
    pooling, as in the paper's code. Never downloads: ``weights_path`` is a local file (e.g.
    torchvision's ``vgg19-dcbb9e9d.pth``); a missing file or wrong keys/shapes raise InputError
    naming the file.

    preprocess: "torchvision" (ImageNet mean/std on RGB in [0, 1], for torchvision's weights)
    or "caffe" (BGR in [0, 255] minus the Caffe mean, for Caffe-converted VGG19 weights such as
    the paper's vgg19-d01eb7cb.pth; the paper's code skipped the RGB -> BGR swap).
    Inputs are images in [-1, 1]; the target is detached. The VGG weights are frozen.
    """

    def __init__(self, weights_path: str | Path, n_relus: int = 10, *, weight: float = 1.0,
                 preprocess: str = "torchvision") -> None:
        super().__init__()
        if not 1 <= int(n_relus) <= len(VGG19_LAYERS):
            raise ValueError(f"VGGPerceptual: n_relus must be in [1, {len(VGG19_LAYERS)}], "
                             f"got {n_relus}")
        if preprocess not in _PREPROCESS:
            raise ValueError(f"VGGPerceptual: preprocess must be one of {_PREPROCESS}, "
                             f"got {preprocess!r}")
        self.n_relus = int(n_relus)
        self.weight = float(weight)
        self.preprocess = preprocess
        convs = VGG19_LAYERS[: self.n_relus]
        last = convs[-1][0] + 1                    # index of the last ReLU we need
        layers: list[nn.Module] = []
        conv_at = {i: (cin, cout) for i, cin, cout in convs}
        for i in range(last + 1):
            if i in conv_at:
                layers.append(nn.Conv2d(*conv_at[i], kernel_size=3, padding=1))
            elif i in _VGG19_POOLS:
                layers.append(nn.AvgPool2d(2, 2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self._load(Path(weights_path), convs)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        if preprocess == "torchvision":
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:  # caffe: applied after the RGB -> BGR swap, on [0, 255]
            mean, std = (103.939 / 255.0, 116.779 / 255.0, 123.680 / 255.0), (1 / 255.0,) * 3
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _load(self, path: Path, convs: tuple[tuple[int, int, int], ...]) -> None:
        hint = ("pass the path of a VGG19 state dict, e.g. torchvision's vgg19-dcbb9e9d.pth "
                "(features.N.weight / features.N.bias keys)")
        if not path.is_file():
            raise InputError("VGG19 weights file not found", file=path, hint=hint)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input problem
            raise InputError(f"cannot read VGG19 weights: {type(e).__name__}: {e}",
                             file=path, hint=hint) from None
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise InputError(f"expected a state dict, got {type(sd).__name__}", file=path,
                             hint=hint)
        prefix = "features." if any(str(k).startswith("features.") for k in sd) else ""
        state: OrderedDict[str, Tensor] = OrderedDict()
        missing = []
        for i, cin, cout in convs:
            for name, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
                key = f"{prefix}{i}.{name}"
                if key not in sd:
                    missing.append(key)
                    continue
                t = sd[key]
                if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                    got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise InputError(f"expected shape {shape} for a VGG19 layer, got {got}",
                                     file=path, field=key, hint=hint)
                state[f"{i}.{name}"] = t.float()
        if missing:
            shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
            raise InputError(f"not a VGG19 state dict: missing {len(missing)} keys ({shown})",
                             file=path, field=missing[0], hint=hint)
        self.features.load_state_dict(state)

    def train(self, mode: bool = True) -> "VGGPerceptual":
        return super().train(False)   # a fixed feature extractor: always eval

    def _normalize(self, x: Tensor) -> Tensor:
        x = (x + 1.0) * 0.5
        if self.preprocess == "caffe":
            x = x.flip(1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target, "VGGPerceptual")
        if pred.shape[1] != 3:
            raise ValueError(f"VGGPerceptual: expected RGB images, got {pred.shape[1]} channels")
        # One pass over the concatenated batch: each layer runs once.
        B = pred.shape[0]
        h = self._normalize(torch.cat([pred, target.detach()], dim=0))
        loss = pred.new_zeros(())
        for layer in self.features:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                loss = loss + F.l1_loss(h[:B], h[B:].detach())
        return loss * self.weight


# ----------------------------------------------------------------------------- metrics

@torch.no_grad()
def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None,
         value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """PSNR in dB per image (B,), over the mask's pixels (weights; all pixels when None).

    10 log10((hi - lo)^2 / MSE); inf for identical images, NaN for an empty mask.
    """
    data_range = float(value_range[1]) - float(value_range[0])
    _check_pair(pred, target, "psnr")
    m = _mask_weights(mask, pred, "psnr").double()
    se = ((pred.double() - target.double()) ** 2 * m).sum((1, 2, 3))
    den = m.sum((1, 2, 3)) * pred.shape[1]
    mse = se / den
    out = 10.0 * torch.log10(data_range ** 2 / mse)
    return torch.where(den > 0, out, torch.full_like(out, math.nan))


@torch.no_grad()
def masked_ssim(pred: Tensor, target: Tensor, mask: Tensor | None = None,
                value_range: tuple[float, float] = (-1.0, 1.0), win_size: int = 11) -> Tensor:
    """SSIM per image (B,), the SSIM map averaged over the mask's pixels (weights).

    The map (computed in float64) covers window centres at least win_size // 2 px inside the
    image; the mask is cropped to the same region. NaN when the mask has no weight there.
    """
    _check_pair(pred, target, "masked_ssim")
    m = _mask_weights(mask, pred, "masked_ssim").double()
    smap = ssim_map(pred.double(), target.double(), value_range, win_size).mean(1, keepdim=True)
    r = win_size // 2
    H, W = pred.shape[-2:]
    m = m[..., r:H - r, r:W - r]
    den = m.sum((1, 2, 3))
    out = (smap * m).sum((1, 2, 3)) / den.clamp(min=1e-300)
    return torch.where(den > 0, out, torch.full_like(out, math.nan))


@torch.no_grad()
def mask_iou(pred: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """IoU per image (B,) of masks (B,1,H,W) / (B,H,W) binarised at ``threshold``
    (value > threshold). Two empty masks agree perfectly (1)."""
    if pred.shape != target.shape:
        raise ValueError(f"mask_iou: shapes differ {tuple(pred.shape)} vs {tuple(target.shape)}")
    p = pred > threshold
    t = target.to(pred.device) > threshold
    if p.dim() == 4:
        p, t = p.flatten(1, 2), t.flatten(1, 2)   # (B,1,H,W) -> (B,H,W)
    return _bool_mask_iou(p, t)
