"""Per-frame alignment of the appearance fit (appearance/align.py): a point moves exactly by its
frame's interpolated pixel offset, the offsets are learnable through the real splat (a known
misregistration is recovered), and a fit keeps its alignment in the checkpoint."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings, strategies as st

from pointwear.appearance.align import FrameAlignment, time_weights
from pointwear.appearance.losses import dice_loss
from pointwear.appearance.fit import AppearanceFitter, AppearanceOptions
from pointwear.data.subject import read_subject
from pointwear.errors import InputError
from pointwear.render.rasterizer import project
from pointwear.render.splat import splat

from test_appearance_fit import fit_tiny_outfit, make_subject


def _camera(f: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[f, 0.0, cx], [0.0, 1.1 * f, cy], [0.0, 0.0, 1.0]])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), grid=st.integers(2, 8), f=st.floats(80.0, 600.0),
       depth=st.floats(0.5, 6.0))
def test_points_project_moved_by_their_frames_offsets(seed, grid, f, depth):
    g = torch.Generator().manual_seed(seed)
    align = FrameAlignment(3, grid).double()
    with torch.no_grad():
        align.nodes.copy_(torch.randn(align.nodes.shape, generator=g, dtype=torch.float64) * 3)
    pts = torch.rand(2, 40, 3, generator=g, dtype=torch.float64) - 0.5
    pts[..., 2] = depth + pts[..., 2]
    K = _camera(f, 64.0, 60.0).double().expand(2, 3, 3)
    idx = torch.tensor([2, 0])
    moved = align(idx, pts, K, (128, 128))
    uv, z = project(pts, K)
    uv2, z2 = project(moved, K)
    torch.testing.assert_close(uv2 - uv, align.offsets(idx, uv, (128, 128)), atol=1e-8, rtol=0)
    torch.testing.assert_close(z2, z)                       # only across the view, never in depth
    # a node's value is the offset at its own pixel (the grid spans the image corner to corner)
    corner = torch.tensor([[[127.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(align.offsets(torch.tensor([1]), corner, (128, 128))[0, 0], align.nodes[1, :, 0, -1])


def test_zero_field_leaves_points_where_they_are():
    pts = torch.rand(1, 30, 3) + torch.tensor([0.0, 0.0, 2.0])
    out = FrameAlignment(1, 4)(torch.tensor([0]), pts, _camera(200.0, 32.0, 32.0)[None], (64, 64))
    torch.testing.assert_close(out, pts)


def test_known_misregistration_is_recovered_through_the_splat():
    """A textured point patch splatted 1.5 px right and 1 px up: the offsets learned from the
    image alone (Adam through `splat`) bring the patch there, within 0.25 px."""
    g = torch.Generator().manual_seed(0)
    n = 48
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32),
                            indexing="ij")
    K = _camera(100.0, 8.0, 8.0)[None]
    K[0, 1, 1] = 100.0
    z = 2.0
    pts = torch.stack([xs.reshape(-1) * z / 100, ys.reshape(-1) * z / 100, torch.full((n * n,), z)], -1)[None]
    check = (((xs // 3) + (ys // 3)) % 2).reshape(1, -1, 1) * 2 - 1      # 3 px checks
    feats = torch.cat([check, torch.rand(1, n * n, 1, generator=g) * 0.2], -1)
    shift = torch.tensor([1.5, -1.0])
    truth = FrameAlignment(1, 2)
    with torch.no_grad():
        truth.nodes[:] = shift.view(1, 2, 1, 1)
    size = (n + 16, n + 16)
    with torch.no_grad():
        target = splat(truth(torch.tensor([0]), pts, K, size), feats, K, size)
    align = FrameAlignment(1, 2)
    opt = torch.optim.Adam(align.parameters(), lr=0.05)
    for _ in range(150):
        out = splat(align(torch.tensor([0]), pts, K, size), feats, K, size)
        loss = (out - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    err = (align.nodes.detach()[0] - shift.view(2, 1, 1)).abs().max()
    assert err < 0.25, align.nodes.detach()[0]


ON = dict(epochs=12, align_grid=4, mask_align_steps=40, mask_align_grid=3)   # both alignments on (off by default)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_body):
    root = tmp_path_factory.mktemp("align")
    subject = make_subject(root, default_body)
    return subject, fit_tiny_outfit(subject, root / "outfit", default_body)


def test_fit_learns_offsets_and_keeps_them_in_its_checkpoint(tiny, tmp_path, default_body):
    subject_dir, outfit = tiny
    subject = read_subject(subject_dir)
    app = tmp_path / "app"
    fitter = AppearanceFitter(subject, outfit, app, AppearanceOptions(**ON), body=default_body)
    result = fitter.run()
    assert set(result["metrics"]["heldout_mask_aligned"]) == {"psnr", "ssim", "iou"}
    assert set(result["metrics"]["heldout_time_aligned"]) == {"psnr", "ssim", "iou"}
    nodes = fitter.align.nodes.detach().clone()
    assert nodes.shape == (len(result["train_frames"]), 2, 4, 4) and nodes.abs().max() > 0
    assert result["alignment"]["grid"] == 4 and result["alignment"]["max_px"] > 0
    assert all("align" in h for h in result["history"])
    again = AppearanceFitter(subject, outfit, app, AppearanceOptions(**ON), body=default_body)
    again.load_checkpoint()
    torch.testing.assert_close(again.align.nodes, nodes)
    with pytest.raises(InputError) as err:
        AppearanceFitter(subject, outfit, app, AppearanceOptions(**(ON | {"align_grid": 0})), body=default_body).run()
    assert err.value.field == "align" and "checkpoint.pt" in str(err.value)
    with pytest.raises(InputError) as err:
        AppearanceFitter(subject, outfit, tmp_path / "x", AppearanceOptions(align_grid=1), body=default_body)
    assert err.value.field == "align_grid"
    with pytest.raises(InputError) as err:
        AppearanceFitter(subject, outfit, tmp_path / "x", AppearanceOptions(mask_align_grid=-2), body=default_body)
    assert err.value.field == "mask_align_grid"
    _held_frames_are_aligned_to_their_masks_only(fitter)


def _held_frames_are_aligned_to_their_masks_only(fitter: AppearanceFitter) -> None:
    """Held-out points displaced 4 px to the right: the mask-only alignment moves them back left
    and the rendered mask fits the clothing mask better; the frame's RGB plays no part (noise there changes
    nothing)."""
    held = fitter.held
    push = FrameAlignment(len(held), 2)
    with torch.no_grad():
        push.nodes[:, 0] = 4.0   # the test's 12-epoch network renders a soft mask: on a CPU without
                                 # bfloat16 a 2 px push came back by only 0.45 px, 4 px by 1.0 px
        idx = torch.arange(len(held))
        displaced = replace(held, points=push(idx, held.points, held.K, held.size))
    def miss(f) -> float:        # soft Dice loss of the rendered mask against the clothing mask
        return float(dice_loss(fitter.model.render(f.points, f.visible, f.K, f.size)[1], f.masks))

    aligned = fitter.mask_aligned(displaced)
    moved = fitter.mask_alignment.offsets(idx, project(displaced.points, displaced.K)[0], held.size)
    assert moved[..., 0].mean() < -0.5, moved[..., 0].mean()
    assert miss(aligned) < miss(displaced), (miss(aligned), miss(displaced))
    noisy = replace(displaced, images=torch.rand_like(displaced.images) * 2 - 1)
    torch.testing.assert_close(fitter.mask_aligned(noisy).points, aligned.points)


def test_time_weights_pick_the_neighbouring_known_frames():
    known = [8, 0, 1, 2, 4, 5, 6, 9]           # any order: positions refer to this list
    lo, hi, w = time_weights(known, [3, 7, 5, 10, 0])
    assert [known[i] for i in lo] == [2, 6, 5, 9, 0] and [known[i] for i in hi] == [4, 8, 5, 9, 0]
    assert w == [0.5, 0.5, 0.0, 0.0, 0.0]
    lo, hi, w = time_weights([4, 8], [5, 1])
    assert (lo, hi) == ([0, 0], [1, 0]) and w == [0.25, 0.0]


def test_cloth_field_follows_the_rest_points_and_interpolates_in_time():
    """A cloth-space field gives a point the same offset wherever it projects (it is attached to
    the point's rest position), and a frame between two known ones takes their linear blend."""
    g = torch.Generator().manual_seed(3)
    rest = torch.rand(50, 3, generator=g) * torch.tensor([0.6, 1.0, 0.3])
    align = FrameAlignment(2, 3, rest)
    assert align.nodes.shape == (2, 2, 3, 3, 3)
    with torch.no_grad():
        align.nodes.copy_(torch.randn(align.nodes.shape, generator=g))
    idx = torch.tensor([0, 1])
    uv = torch.rand(2, 50, 2, generator=g) * 64
    a = align.offsets(idx, uv, (64, 64))
    torch.testing.assert_close(a, align.offsets(idx, uv.flip(1), (64, 64)))     # independent of the projection
    assert a.shape == (2, 50, 2) and not torch.allclose(a[0], a[1])
    mid = align.at_times([10, 14], [11, 10, 20])
    b = mid.offsets(torch.arange(3), uv[:1].expand(3, -1, -1), (64, 64))
    torch.testing.assert_close(b[0], 0.75 * a[0] + 0.25 * a[1])
    torch.testing.assert_close(b[1], a[0])
    torch.testing.assert_close(b[2], a[1])
    assert not mid.nodes.requires_grad
