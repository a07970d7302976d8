"""Appearance: the rendering U-Net, point descriptors, losses and metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from pointwear.appearance import PointDescriptors, RenderNet
from pointwear.appearance.losses import (VGG19_LAYERS, VGGPerceptual, dice_loss, mask_iou,
                                         masked_l1, masked_ssim, psnr, ssim, ssim_loss)
from pointwear.errors import InputError
from pointwear.render.splat import splat


# ----------------------------------------------------------------------------- U-Net

@pytest.fixture(scope="module")
def net() -> RenderNet:
    torch.manual_seed(0)
    return RenderNet()


def test_parameter_count(net):
    n = net.num_parameters()
    assert 1.8e6 < n < 2.4e6, n        # the paper's renderer: ~2.2 M
    assert net.widths == (16, 32, 64, 128, 256)


@pytest.mark.parametrize("H,W", [(1, 1), (17, 23), (32, 32), (45, 18)])
def test_shapes_and_ranges_any_size(net, H, W):
    net.eval()
    x = torch.randn(2, 17, H, W)
    with torch.no_grad():
        rgb, mask = net(x)
    assert rgb.shape == (2, 3, H, W) and mask.shape == (2, 1, H, W)
    assert rgb.abs().max() <= 1 and mask.min() >= 0 and mask.max() <= 1
    assert rgb.is_contiguous() and mask.is_contiguous()


def test_train_mode_backward_odd_size(net):
    net.train()
    x = torch.randn(2, 17, 19, 21, requires_grad=True)
    rgb, mask = net(x)
    (rgb.mean() + mask.mean()).backward()
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=True)


def test_eval_mode_is_deterministic_and_batch_independent(net):
    """In eval mode BatchNorm uses its running statistics: a frame renders the same alone or
    in a batch, every time (the paper's code rendered in train mode, where it does not)."""
    torch.manual_seed(1)
    x = torch.randn(3, 17, 24, 20)
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 17, 24, 20) * 3 + 1)    # move the running stats off their init
    net.eval()
    with torch.no_grad():
        a_rgb, a_mask = net(x)
        b_rgb, b_mask = net(x)
        one_rgb, one_mask = net(x[1:2])
    assert torch.equal(a_rgb, b_rgb) and torch.equal(a_mask, b_mask)
    torch.testing.assert_close(one_rgb, a_rgb[1:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_mask, a_mask[1:2], atol=1e-5, rtol=1e-5)
    net.train()
    with torch.no_grad():
        t_one, _ = net(x[1:2])
    assert not torch.allclose(t_one, a_rgb[1:2], atol=1e-3)  # train mode: batch statistics


def test_render_uses_eval_mode_and_restores(net):
    net.train()
    x = torch.randn(1, 17, 16, 16)
    rgb, mask = net.render(x)
    assert net.training and not rgb.requires_grad
    net.eval()
    with torch.no_grad():
        rgb2, _ = net(x)
    assert torch.equal(rgb, rgb2)
    net.train()


def test_inference_net_folds_batchnorm_and_follows_the_weights():
    """The render path's network: BatchNorm folded into the convs gives the eval-mode outputs;
    the folded copy is made again when the weights change (an optimiser step)."""
    torch.manual_seed(2)
    net = RenderNet(17, (8, 16, 32))
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 17, 24, 20) * 2 + 1)     # running statistics off their init
    x = torch.rand(2, 17, 24, 20)
    net.eval()
    with torch.no_grad():
        ref = net(x)
    net.train()
    fused = net.inference_net()
    assert net.training and fused is net.inference_net()            # cached, the original untouched
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        out = fused(x)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(x)[0].mean().backward()
    opt.step()
    assert net.inference_net() is not fused
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.inference_net()(x)[0], net(x)[0], atol=1e-5, rtol=1e-5)


def test_multiscale_inputs_reach_their_levels_and_fold():
    """scales > 1: each coarser splat enters the encoder at its own level (its gradient is
    non-zero, changing it changes the output), odd sizes pad like the full-resolution input, the
    folded inference copy gives the eval outputs, and a wrong count of coarse inputs is refused."""
    torch.manual_seed(4)
    net = RenderNet(17, (8, 16, 32, 64), scales=3)
    assert net.down[0][0].in_channels == 8 + 17 and net.down[1][0].in_channels == 16 + 17
    assert net.down[2][0].in_channels == 32                         # no input at the coarsest level
    H, W = 37, 50
    x = torch.rand(2, 17, H, W)
    coarse = [torch.rand(2, 17, -(-H // 2 ** l), -(-W // 2 ** l), requires_grad=True) for l in (1, 2)]
    net.train()
    rgb, mask = net(x, coarse)
    assert rgb.shape == (2, 3, H, W) and mask.shape == (2, 1, H, W)
    (rgb.mean() + mask.mean()).backward()
    assert all(c.grad is not None and float(c.grad.abs().sum()) > 0 for c in coarse)
    net.eval()
    with torch.no_grad():
        a = net(x, [c.detach() for c in coarse])
        b = net(x, [coarse[0].detach(), torch.zeros_like(coarse[1])])
        fused = net.inference_net()(x, [c.detach() for c in coarse])
    assert float((a[0] - b[0]).abs().max()) > 1e-4
    torch.testing.assert_close(fused[0], a[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="coarser inputs"):
        net(x)
    with pytest.raises(ValueError, match="scales"):
        RenderNet(17, (8, 16), scales=3)


def test_multiscale_model_splats_a_pyramid_and_round_trips(tmp_path):
    """AppearanceModel with scales 3: the coarse levels are the same points splatted by K / 2^l at
    ceil(size / 2^l) (a point's coverage lands at its halved pixel); a saved model loads with its
    scales, and a config without the field (older files) means a single scale."""
    from pointwear.appearance.model import AppearanceConfig, AppearanceModel, load_appearance
    config = AppearanceConfig(num_points=1, descriptor_dim=4, widths=(8, 16, 32), scales=3)
    model = AppearanceModel(config, seed=0)
    K = torch.tensor([[[40.0, 0, 12.0], [0, 40.0, 8.0], [0, 0, 1]]])
    pts = torch.tensor([[[0.0, 0.0, 1.0]]])                           # projects to (12, 8)
    x, coarse = model.splat_input(pts, torch.ones(1, 1, dtype=torch.bool), K, (21, 27))
    assert x.shape == (1, 5, 21, 27) and [tuple(c.shape[-2:]) for c in coarse] == [(11, 14), (6, 7)]
    for level, image in enumerate([x, *coarse]):
        cov = image[0, -1]
        v, u = divmod(int(cov.argmax()), cov.shape[1])
        want = (12 + 0.5) / 2 ** level - 0.5, (8 + 0.5) / 2 ** level - 0.5
        assert abs(u - want[0]) <= 0.5 and abs(v - want[1]) <= 0.5, (level, u, v, want)
    model.save(tmp_path / "appearance.pt")
    loaded = load_appearance(tmp_path)
    assert loaded.config.scales == 3 and loaded.net.scales == 3
    old = config.to_dict()
    del old["scales"]
    assert AppearanceConfig.from_dict(old).scales == 1


def test_bfloat16_inference_stays_close_to_float32():
    """The CPU render's bfloat16 network (when the CPU has it natively): within ~1/255 of the
    float32 outputs on average, a few levels at most."""
    from pointwear.appearance.unet import network_dtype
    torch.manual_seed(3)
    net = RenderNet(17, (8, 16, 32, 64))
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 17, 32, 32) * 2)
    x = torch.rand(1, 17, 40, 36).clamp(min=0.3) - 0.3
    with torch.no_grad():
        f_rgb, f_mask = net.inference_net(torch.float32)(x)
        b_rgb, b_mask = net.inference_net(torch.bfloat16)(x)
    assert b_rgb.dtype == torch.bfloat16
    for a, b in ((f_rgb, b_rgb.float()), (f_mask, b_mask.float())):
        assert (a - b).abs().mean() < 4e-3 and (a - b).abs().max() < 4e-2
    assert network_dtype("cpu", "float32") == torch.float32
    assert network_dtype("meta", "bfloat16") == torch.float32     # no autocast-free bf16 there
    assert network_dtype("cpu", "auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="precision"):
        network_dtype("cpu", "half")


def test_near_points_is_the_square_max_pool():
    """The mask cut's reach test (separable max pool) equals one square max pool."""
    import torch.nn.functional as F

    from pointwear.appearance.model import MASK_REACH_PX, near_points
    torch.manual_seed(4)
    cov = (torch.rand(2, 1, 50, 43) > 0.995).float() * torch.rand(2, 1, 50, 43)
    k = 2 * MASK_REACH_PX + 1
    ref = (F.max_pool2d(cov, k, stride=1, padding=MASK_REACH_PX) > 1e-3).float()
    assert torch.equal(near_points(cov), ref) and 0 < ref.mean() < 1


def test_bad_input_channels(net):
    with pytest.raises(ValueError, match="17"):
        net(torch.randn(1, 16, 8, 8))


# ----------------------------------------------------------------------------- descriptors

def test_descriptors_shape_and_init():
    d = PointDescriptors(100, 16, generator=torch.Generator().manual_seed(0))
    assert d().shape == (1, 100, 16) and d.num_points == 100 and d.dim == 16
    assert d.descriptors.requires_grad
    assert 0.8 < float(d.descriptors.detach().std()) < 1.2        # the paper's torch.randn
    small = PointDescriptors(100, 16, init_std=0.01)
    assert float(small.descriptors.detach().std()) < 0.02


def test_descriptors_check_names_file_and_counts(tmp_path):
    d = PointDescriptors(8192, 16)
    d.check(8192, 16)
    ckpt = tmp_path / "appearance.pt"
    with pytest.raises(InputError) as e:
        d.check(8000, 16, file=ckpt)
    msg = str(e.value)
    assert str(ckpt) in msg and "descriptors" in msg
    assert "checkpoint has 16-D descriptors for 8192 points, the outfit has 8000" in msg
    assert e.value.file == str(ckpt) and e.value.field == "descriptors"
    with pytest.raises(InputError, match="needs 8-D descriptors for 8192 points"):
        d.check(8192, 8, file=ckpt)


def test_descriptors_from_tensor(tmp_path):
    vals = torch.randn(10, 4)
    d = PointDescriptors.from_tensor(vals)
    assert torch.equal(d.descriptors.detach(), vals)
    with pytest.raises(InputError, match="outfit.npz"):
        PointDescriptors.from_tensor(torch.randn(10), file="outfit.npz")


# ----------------------------------------------------------------------------- tiny overfit

def test_tiny_overfit_net_and_descriptors():
    """Net + descriptors fitted to one 32 x 32 frame through the real splatter: L1 falls."""
    torch.manual_seed(0)
    H = W = 32
    n = 20
    ys, xs = torch.meshgrid(torch.linspace(-0.35, 0.35, n), torch.linspace(-0.35, 0.35, n),
                            indexing="ij")
    pts = torch.stack([xs.flatten(), ys.flatten(), torch.full((n * n,), 2.0)], -1)[None]
    K = torch.tensor([[55.0, 0, 15.5], [0, 55.0, 15.5], [0, 0, 1]])
    with torch.no_grad():
        mask = (splat(pts, torch.ones(1, n * n, 1), K, (H, W))[:, 1:] > 0.5).float()
        yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        colour = torch.stack([torch.sin(xx / 3.0), torch.cos(yy / 4.0),
                              ((xx + yy) % 8 < 4).float() * 2 - 1])[None] * 0.8
        target = colour * mask - (1 - mask)          # garment over a fixed background
    net, desc = RenderNet(), PointDescriptors(n * n)
    opt = torch.optim.Adam([{"params": net.parameters(), "lr": 1e-3},
                            {"params": desc.parameters(), "lr": 1e-2}])
    losses = []
    for _ in range(50):
        rgb, m = net(splat(pts, desc(), K, (H, W)))
        l1 = masked_l1(rgb, target)
        opt.zero_grad()
        (l1 + dice_loss(m, mask)).backward()
        opt.step()
        losses.append(float(l1.detach()))
    assert losses[-1] < 0.25 * losses[0], losses[::10]
    assert float(desc.descriptors.grad.abs().sum()) > 0     # descriptors were trained


# ----------------------------------------------------------------------------- losses

def _ssim_numpy(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Wang et al. SSIM with scipy's Gaussian filter (sigma 1.5, 11 taps), valid region."""
    def blur(a):
        return gaussian_filter(a, 1.5, truncate=5 / 1.5, mode="constant")[5:-5, 5:-5]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())


def test_ssim_identity_and_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 30, 27, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-12)
    got = ssim(x, y)
    for b in range(2):
        xs, ys = ((t[b].numpy() + 1) / 2 for t in (x, y))     # [0, 1], data range 1
        want = np.mean([_ssim_numpy(xs[c], ys[c], 1.0) for c in range(3)])
        assert float(got[b]) == pytest.approx(want, abs=1e-10)
    assert 0 < float(got.min()) < 0.99
    # the same images on a [0, 255] scale give the same SSIM
    torch.testing.assert_close(ssim((x + 1) * 127.5, (y + 1) * 127.5, (0.0, 255.0)), got)


def test_ssim_gradient():
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    ssim_loss(x, torch.rand(1, 3, 16, 16, dtype=torch.float64)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_dice_loss():
    m = (torch.rand(2, 1, 20, 20) > 0.5).float()
    assert float(dice_loss(m, m)) == pytest.approx(0.0, abs=1e-5)
    assert float(dice_loss(m, m, log=False)) == pytest.approx(0.0, abs=1e-5)
    assert float(dice_loss(m, 1 - m)) > 5                   # disjoint masks: -log(~0)
    half = m * 0.5
    assert 0 < float(dice_loss(half, m)) < float(dice_loss(1 - m, m))
    p = torch.full((1, 1, 4, 4), 0.3, requires_grad=True)
    dice_loss(p, torch.ones(1, 1, 4, 4)).backward()
    assert p.grad.abs().sum() > 0


def test_masked_l1():
    x = torch.zeros(1, 3, 4, 4)
    y = torch.zeros(1, 3, 4, 4)
    y[..., :2, :] = 1.0                 # top half differs by 1
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1.0
    assert float(masked_l1(x, y)) == pytest.approx(0.5)
    assert float(masked_l1(x, y, mask)) == pytest.approx(1.0)
    assert float(masked_l1(x, y, 1 - mask)) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- metrics

def test_psnr_and_ssim_in_mask():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 40, 40, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 40, 40)
    mask[:, :, 10:30, 12:28] = 1
    y = x.clone()
    y[:, :, 10:30, 12:28] += 0.1        # inside: error 0.1 everywhere -> MSE 0.01
    y[:, :, :2, :] = -x[:, :, :2, :]    # far outside the mask: ignored by both metrics
    # PSNR over the mask: 10 log10(2^2 / 0.01) = 26.02 dB
    torch.testing.assert_close(psnr(x, y, mask).float(), torch.full((2,), 10 * math.log10(400.0)))
    assert float(psnr(x, y).min()) < 20                     # unmasked sees the outside
    assert torch.isinf(psnr(x, x, mask)).all()
    s_in = masked_ssim(x, y, mask)
    assert ((s_in > 0.5) & (s_in < 1.0)).all()
    y2 = y.clone()
    y2[:, :, :2, :] = 0.0               # change only pixels > 5 px from the mask
    torch.testing.assert_close(masked_ssim(x, y2, mask), s_in)
    torch.testing.assert_close(masked_ssim(x, x, mask), torch.ones(2, dtype=torch.float64))
    empty = torch.zeros_like(mask)
    assert torch.isnan(psnr(x, y, empty)).all() and torch.isnan(masked_ssim(x, y, empty)).all()


def test_mask_iou():
    a = torch.zeros(2, 1, 10, 10)
    b = torch.zeros(2, 1, 10, 10)
    a[0, :, :5] = 0.9                   # 50 px
    b[0, :, 2:7] = 0.8                  # 50 px, overlap 30
    torch.testing.assert_close(mask_iou(a, b), torch.tensor([30 / 70, 1.0], dtype=torch.float64))
    assert float(mask_iou(a[:1], a[:1])) == 1.0


# ----------------------------------------------------------------------------- VGG perceptual

@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A random VGG19 state dict with torchvision's keys (we never download weights)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i, cin, cout in VGG19_LAYERS:
        std = math.sqrt(2 / (9 * cin))
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * std
        sd[f"features.{i}.bias"] = torch.zeros(cout)
    sd["classifier.0.weight"] = torch.zeros(2, 2)          # ignored
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(sd, path)
    return path


def test_vgg_perceptual_loss(vgg_file):
    crit = VGGPerceptual(vgg_file, n_relus=10)
    assert sum(isinstance(m, torch.nn.ReLU) for m in crit.features) == 10
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in crit.features)
    assert all(not p.requires_grad for p in crit.parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert float(crit(x, x)) == pytest.approx(0.0, abs=1e-7)
    pred = x.clone().requires_grad_(True)
    loss = crit(pred, y)
    assert float(loss.detach()) > 0
    loss.backward()
    assert pred.grad.abs().sum() > 0
    crit.train()
    assert not crit.training
    caffe = VGGPerceptual(vgg_file, n_relus=3, preprocess="caffe", weight=2.0)
    assert float(caffe(x, y)) > 0


def test_vgg_bad_files(tmp_path, vgg_file):
    missing = tmp_path / "nope" / "vgg19.pth"
    with pytest.raises(InputError, match="not found") as e:
        VGGPerceptual(missing)
    assert str(missing) in str(e.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, wrong)
    with pytest.raises(InputError, match="missing") as e:
        VGGPerceptual(wrong)
    assert str(wrong) in str(e.value) and "0.weight" in str(e.value)
    sd = torch.load(vgg_file, weights_only=True)
    sd["features.2.weight"] = torch.zeros(64, 64, 1, 1)
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save(sd, bad_shape)
    with pytest.raises(InputError, match="features.2.weight") as e:
        VGGPerceptual(bad_shape)
    assert str(bad_shape) in str(e.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read") as e:
        VGGPerceptual(garbage)
    assert str(garbage) in str(e.value)
    # a bare `vgg.features` state dict (keys "0.weight", ...) loads too
    bare = tmp_path / "bare.pth"
    torch.save({k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")
                and not k.startswith("features.2.")} | {"2.weight": torch.randn(64, 64, 3, 3),
                                                       "2.bias": torch.zeros(64)}, bare)
    VGGPerceptual(bare, n_relus=4)
