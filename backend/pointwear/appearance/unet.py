"""The rendering network: a U-Net from splatted descriptors to RGB and a clothing mask.

Input: the splatted image of `render.splat` — 16 composited descriptor channels plus the
coverage channel (17 channels). Output: RGB in [-1, 1] (tanh) and a mask in [0, 1] (sigmoid).

Architecture (as the paper's generator, feature widths 16, 32, 64, 128, 256):

- every block is two 3x3 conv -> BatchNorm -> ReLU layers;
- encoder: a block at full resolution, then 4 x (2x2 average pool -> block);
- decoder: 4 x (bilinear 2x upsampling -> concatenate the encoder skip -> block);
- heads: a 3x3 conv to 3 channels + tanh (RGB) and a 3x3 conv to 1 channel + sigmoid (mask).

About 2.0 M parameters with the default widths. Differences from the paper's code (which
reached ~2.2 M): there, each decoder stage convolved the upsampled deep features down to the
skip width before the concatenation and the decoder blocks had no normalisation, and the heads
were deeper (BN-ReLU-conv stacks). Here the upsampled features are concatenated directly (the
first decoder conv does the channel reduction), which is cheaper at full resolution, and every
conv is followed by BatchNorm as in the encoder. Plain convolutions for now: NPBG's gated and
partial convolutions (meant for holes in sparse splats) are not implemented.

Multi-scale input (`scales` > 1, Neural Point-Based Graphics' pyramid): the descriptors are also
splatted at 1/2, 1/4, ... of the window's resolution, and each of those images is concatenated to
the input of the encoder block of its level (after the average pool). Points sparse at full
resolution leave holes there; at a coarser level the same points cover the area, so the coarse
levels can carry the texture where the fine one has gaps. `scales` = 1 is the plain U-Net.

Any H, W: the input is zero-padded at the bottom/right to a multiple of 16 (2^4 poolings) and the
outputs are cropped back; zero is the splat's own "no point here" value. Training in train mode
needs more than one value per channel at the coarsest level (B x H/16 x W/16 > 1), as any
BatchNorm does.

BatchNorm and inference: use ``net.eval()`` when rendering. In train mode BatchNorm normalises
with the statistics of the current batch, so a single rendered frame would be normalised by its
own statistics and look different from what training saw (and depend on what else is in the
frame). The paper's inference code never switched the network to eval mode; `RenderNet.render`
here does it for you and restores the previous mode.

Inference speed (`RenderNet.inference_net`, `network_dtype`): for rendering, each conv and its
eval-mode BatchNorm are folded into one conv with a bias (the same affine map, one pass over the
image instead of two), and on CPUs with native bfloat16 dot products (AVX512-BF16 / AMX) the
network runs in bfloat16 (oneDNN accumulates in float32; about half the CPU time of float32 on
one core here, RGB within ~1/255 of float32 on average, see docs/benchmarks.md).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["RenderNet", "ConvBlock", "network_dtype", "PRECISIONS"]

PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16(device: torch.device) -> bool:
    """True when `device` computes bfloat16 convolutions natively (and so faster than float32):
    a CPU with AVX512-BF16 or AMX, or a CUDA GPU with bf16 support."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)())
               for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def network_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """The dtype the U-Net's convolutions run in: "float32", "bfloat16", or "auto" = bfloat16 on
    a CPU that has it natively, else float32 (CUDA keeps float32 unless asked: it is fast there,
    and the CPU/CUDA agreement checks compare float32)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cpu" and native_bfloat16(device) else torch.float32
    if precision == "bfloat16" and device.type not in ("cpu", "cuda"):
        return torch.float32          # e.g. the meta device: autocast has no such device type
    return torch.bfloat16 if precision == "bfloat16" else torch.float32




class ConvBlock(nn.Sequential):
    """Two (3x3 conv -> BatchNorm -> ReLU) layers; convs without bias (BatchNorm has one)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class RenderNet(nn.Module):
    """U-Net renderer: ``forward(x (B,in_channels,H,W)) -> (rgb (B,3,H,W) in [-1,1],
    mask (B,1,H,W) in [0,1])``.

    in_channels: channels of the splatted input (16 descriptor channels + coverage = 17).
    widths: feature widths per level, finest first; len(widths) - 1 average-pool downsamplings.
    scales: splatted inputs (1..len(widths)): the full-resolution one and ``scales - 1`` coarser
    ones, ``coarse[l-1]`` (B,in_channels,h_l,w_l) with h_l <= ceil(H / 2^l), fed to level l.
    """

    def __init__(self, in_channels: int = 17,
                 widths: Sequence[int] = (16, 32, 64, 128, 256), scales: int = 1) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1 or in_channels < 1 or not 1 <= scales <= len(widths):
            raise ValueError(f"RenderNet: need in_channels >= 1, >= 2 positive widths and 1 <= scales <= "
                             f"len(widths), got in_channels={in_channels}, widths={widths}, scales={scales}")
        self.in_channels = int(in_channels)
        self.widths = widths
        self.scales = int(scales)
        self.multiple = 2 ** (len(widths) - 1)
        self.start = ConvBlock(self.in_channels, widths[0])
        self.down = nn.ModuleList(ConvBlock(widths[i] + (self.in_channels if i + 1 < scales else 0), widths[i + 1])
                                  for i in range(len(widths) - 1))
        # up[i] brings level i+1 to level i: upsampled widths[i+1] + skip widths[i] -> widths[i]
        self.up = nn.ModuleList(ConvBlock(widths[i + 1] + widths[i], widths[i])
                                for i in range(len(widths) - 1))
        self.rgb_head = nn.Conv2d(widths[0], 3, 3, padding=1)
        self.mask_head = nn.Conv2d(widths[0], 1, 3, padding=1)
        # NHWC ("channels_last") is oneDNN's preferred layout: ~25 % faster convolutions on CPU;
        # the layout survives .to(device) and load_state_dict (copies into these tensors).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, coarse: Sequence[Tensor] = ()) -> tuple[Tensor, Tensor]:
        """x (B,in_channels,H,W); coarse: the ``scales - 1`` coarser splats (see the class)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or len(coarse) != self.scales - 1:
            raise ValueError(f"RenderNet: expected input (B,{self.in_channels},H,W) and {self.scales - 1} "
                             f"coarser inputs, got {tuple(x.shape)} and {len(coarse)}")
        H, W = x.shape[-2:]
        m = self.multiple
        x = self._padded(x, -(-H // m) * m, -(-W // m) * m)
        h = self.start(x)
        skips = [h]
        for i, block in enumerate(self.down):
            h = F.avg_pool2d(h, 2)
            if i < len(coarse):
                h = torch.cat([h, self._padded(coarse[i], *h.shape[-2:])], 1)
            h = block(h)
            skips.append(h)
        skips.pop()
        for i in range(len(self.up) - 1, -1, -1):
            skip = skips[i]
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = self.up[i](torch.cat([h, skip], dim=1))
        rgb = torch.tanh(self.rgb_head(h))[..., :H, :W]
        mask = torch.sigmoid(self.mask_head(h))[..., :H, :W]
        return rgb.contiguous(), mask.contiguous()

    def _padded(self, x: Tensor, h: int, w: int) -> Tensor:
        """x (B,C,h',w') zero-padded at the bottom/right to (B,C,h,w) (zero: no point splatted
        there), in the network's dtype and memory layout."""
        if x.shape[-2] > h or x.shape[-1] > w:
            raise ValueError(f"RenderNet: a coarse input {tuple(x.shape)} is larger than its level ({h}, {w})")
        x = F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))
        return x.to(self.rgb_head.weight.dtype).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def render(self, x: Tensor, coarse: Sequence[Tensor] = ()) -> tuple[Tensor, Tensor]:
        """Inference: eval mode (BatchNorm running statistics) and no autograd; the previous
        train/eval mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(x, coarse)
        finally:
            self.train(was_training)

    def inference_net(self, dtype: torch.dtype = torch.float32) -> "RenderNet":
        """An eval-mode copy for rendering: every BatchNorm folded into the conv before it (same
        outputs as ``eval()`` up to float rounding, one pass over the image less per conv), the
        weights in `dtype` (its input is cast to that dtype, its outputs have it). Made once per
        state of the weights and dtype: cached until a parameter or buffer changes (optimiser
        steps and load_state_dict bump their version counters) or the network moves."""
        tensors = list(self.parameters()) + list(self.buffers())
        key = (dtype, tuple((t._version, t.data_ptr()) for t in tensors))
        cached = self.__dict__.pop("_inference", None)
        if cached is not None and cached[0] == key:
            self.__dict__["_inference"] = cached
            return cached[1]
        fused = copy.deepcopy(self)
        fused.eval()
        with torch.no_grad():
            for block in [fused.start, *fused.down, *fused.up]:
                for i in (0, 3):                            # conv, BatchNorm, ReLU, conv, BatchNorm, ReLU
                    block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
                    block[i + 1] = nn.Identity()
        fused.to(dtype=dtype, memory_format=torch.channels_last)
        fused.requires_grad_(False)
        self.__dict__["_inference"] = (key, fused)
        return fused

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
