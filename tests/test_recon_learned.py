"""Learned single-image reconstruction: the data readers (subject, Market-HQ, ATR layouts), the crop,
training from scratch through the soft rasterizer (loss goes down, checkpoint, resume), the model
file (export, reload, corrupt files named), and one-pass prediction."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pointwear.cli import main
from pointwear.errors import InputError
from pointwear.recon.datasets import (ATR_CLOTHING_LABELS, build_inputs, crop_box, crop_input, list_items, load_item,
                                      mask_stem)
from pointwear.recon.learned import (LearnOptions, export_model, load_model, predict, render_prediction,
                                     save_checkpoint, train)
from pointwear.recon.learned_template import build_template
from pointwear.synth.generate import SynthOptions, generate_subject

SMALL = replace(LearnOptions(), height=64, width=32, texture_height=32, texture_width=16, channels=8, hidden=32,
                batch=4, checkpoint_every=1, flip=False, lr=2e-3)


@pytest.fixture(scope="module")
def template():
    return build_template()


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon_learned_data")
    for seed, motion in ((11, "turntable"), (12, "walk")):
        generate_subject(root / f"s{seed}", SynthOptions(frames=2, size=96, seed=seed, motion=motion, points=64),
                         progress=lambda *a: None)
    return root


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _person(h: int = 80, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[10:70, 12:28] = (200, 40, 40)
    mask = np.zeros((h, w), np.uint8)
    mask[10:70, 12:28] = 255
    return rgb, mask


# -- readers ---------------------------------------------------------------------------------------

def test_market_layout_pairs_masks_with_images(tmp_path):
    rgb, mask = _person()
    _png(tmp_path / "pytorch/train_all/0002/0002_c1s1_000451_01.png", rgb)
    _png(tmp_path / "seg_hmr/train_all/0002/0002_c1s1_000451_01_0.19.png", mask)
    _png(tmp_path / "pytorch/train_all/0007/0007_c2s3_070952_01.jpg", rgb)
    _png(tmp_path / "seg_hmr/train_all/0007/0007_c2s3_070952_01.png", mask)
    _png(tmp_path / "seg_hmr/query/0009/ignored_0.20.png", mask)       # other split: not read
    items = list_items(tmp_path, "market")
    assert [i.image.name for i in items] == ["0002_c1s1_000451_01.png", "0007_c2s3_070952_01.jpg"]
    got_rgb, got_mask = load_item(items[0])
    assert got_rgb.shape == (80, 40, 3) and got_mask.sum() == 60 * 16
    (tmp_path / "pytorch/train_all/0007/0007_c2s3_070952_01.jpg").unlink()
    with pytest.raises(InputError, match="0007_c2s3_070952_01.png"):
        list_items(tmp_path, "market")


def test_atr_layout_uses_clothing_labels_or_prepared_masks(tmp_path):
    rgb, _ = _person()
    labels = np.zeros((80, 40), np.uint8)
    labels[10:40, 12:28] = 4          # upper clothes
    labels[40:70, 12:28] = 6          # pants
    labels[0:10, 12:28] = 2           # hair: not clothing
    _png(tmp_path / "humanparsing/JPEGImages/2500_1349.jpg", rgb)
    _png(tmp_path / "humanparsing/SegmentationClassAug/2500_1349.png", labels)
    items = list_items(tmp_path, "atr")
    assert len(items) == 1 and items[0].labels == ATR_CLOTHING_LABELS
    _, mask = load_item(items[0])
    assert mask.sum() == 60 * 16 and not mask[0:10].any()
    # Without the label maps the paper's prepared binary masks are read.
    for p in (tmp_path / "humanparsing/SegmentationClassAug").iterdir():
        p.unlink()
    (tmp_path / "humanparsing/SegmentationClassAug").rmdir()
    _png(tmp_path / "humanparsing/Seg/2500_1349_0.30.png", (labels > 0).astype(np.uint8) * 255)
    items = list_items(tmp_path / "humanparsing", "atr")
    assert items[0].labels is None and load_item(items[0])[1].sum() == 70 * 16


def test_reader_errors_name_the_file(tmp_path):
    (tmp_path / "humanparsing/JPEGImages").mkdir(parents=True)
    (tmp_path / "humanparsing/Seg").mkdir()
    with pytest.raises(InputError, match="no images found"):
        list_items(tmp_path, "atr")
    rgb, mask = _person()
    _png(tmp_path / "humanparsing/JPEGImages/a.jpg", rgb)
    bad = tmp_path / "humanparsing/Seg/a_0.30.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    with pytest.raises(InputError, match="a_0.30.png"):
        load_item(list_items(tmp_path, "atr")[0])
    _png(bad, mask[:40])
    with pytest.raises(InputError, match="a_0.30.png"):
        load_item(list_items(tmp_path, "atr")[0])
    with pytest.raises(InputError, match="layout"):
        list_items(tmp_path, "coco")


@settings(max_examples=60, deadline=None)
@given(stem=st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="_-"),
                    min_size=1, max_size=30),
       frac=st.one_of(st.none(), st.integers(0, 199)))
def test_mask_stem_strips_only_the_fraction_suffix(stem, frac):
    name = stem + ("" if frac is None else f"_{frac // 100}.{frac % 100:02d}") + ".png"
    assert mask_stem(name) == stem
    assert mask_stem(stem + ".jpg") is None


@settings(max_examples=60, deadline=None)
@given(h=st.integers(8, 120), w=st.integers(8, 120), data=st.data())
def test_crop_box_holds_the_mask_at_the_input_aspect(h, w, data):
    y0 = data.draw(st.integers(0, h - 1))
    x0 = data.draw(st.integers(0, w - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    x1 = data.draw(st.integers(x0 + 1, w))
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    bx, by, bw, bh = crop_box(mask)
    assert bw == pytest.approx(bh / 2)
    assert bx <= x0 and by <= y0 and bx + bw >= x1 and by + bh >= y1
    assert max(y1 - y0, 2 * (x1 - x0)) == pytest.approx(0.84 * bh)
    assert crop_box(np.zeros((h, w), bool)) is None


def test_crop_input_removes_background_and_centres_the_mask():
    rgb, mask = _person()
    rgb[:, :5] = 255                                   # background the crop must drop
    x, _ = crop_input(rgb, mask > 0, (64, 32))
    assert x.shape == (4, 64, 32)
    m = x[3] > 0.5
    assert set(x[3].unique().tolist()) <= {0.0, 1.0}
    assert float(x[:3, ~m].abs().max()) == 0.0
    rows = m.any(1).nonzero()
    assert 0.80 < (rows.max() - rows.min() + 1) / 64 < 0.88


# -- training, model files, prediction ------------------------------------------------------------------

def test_train_from_scratch_loss_drops_checkpoint_resumes_and_predicts(subjects, template, tmp_path):
    torch.manual_seed(0)
    items = list_items(subjects, "subject")
    assert len(items) == 4
    inputs = build_inputs(items, (SMALL.height, SMALL.width))
    assert inputs.shape == (4, 4, 64, 32) and inputs.dtype == torch.uint8
    ckpt = tmp_path / "model.pt"
    first = train(inputs, ckpt, replace(SMALL, steps=6), template=template)
    rows = first["history"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    data = [r["iou"] * SMALL.w_iou + r["l1"] for r in rows]
    assert data[-1] < data[0]
    # Resume: continues at step 6 with the same template (EM-moved or not) and weights.
    before = load_model(ckpt)
    second = train(inputs, ckpt, replace(SMALL, steps=8), template=None)
    assert second["started_at"] == 6 and second["history"][-1]["step"] == 8
    assert [r["step"] for r in second["history"]][:6] == [1, 2, 3, 4, 5, 6]
    after = load_model(ckpt)
    assert torch.equal(before.faces, after.faces)
    assert not torch.equal(before.shape_head.weight, after.shape_head.weight)
    # Export (float16, no optimizer) and predict on a full-size image.
    shipped = export_model(ckpt, tmp_path / "shipped.pt")
    assert shipped.stat().st_size < ckpt.stat().st_size
    model = load_model(shipped)
    rgb, mask = load_item(items[0])
    pred = predict(model, rgb, mask, texture_size=(64, 32))
    V = len(template.posed)
    assert pred.vertices.shape == (V, 3) and pred.rest_vertices.shape == (V, 3)
    assert pred.faces.shape == template.faces.shape and pred.uv.shape == (V, 2)
    assert pred.texture.shape == (64, 32, 3) and pred.texture.dtype == np.uint8 and pred.texture.max() > 0
    assert pred.weights.shape == (V, 24) and np.allclose(pred.weights.sum(1), 1, atol=1e-4)
    assert pred.light.shape == (9,) and abs(pred.camera.elevation_deg) <= 15.0 + 1e-6
    # The camera is the original image's: the re-rendered mesh lands on the clothing.
    img, hit = render_prediction(model, pred, rgb.shape[:2])
    assert img.shape == rgb.shape and hit.any()
    iou = (hit & mask).sum() / (hit | mask).sum()
    assert iou > 0.3
    # The rest-pose mesh is the predicted one un-posed: same edges up to the skinning's stretch.
    e = pred.faces[:, :2]
    ratio = np.linalg.norm(pred.rest_vertices[e[:, 0]] - pred.rest_vertices[e[:, 1]], axis=1) / np.linalg.norm(
        pred.vertices[e[:, 0]] - pred.vertices[e[:, 1]], axis=1)
    assert 0.8 < np.median(ratio) < 1.25


def test_cli_train_recon_writes_a_model_and_names_a_corrupt_one(subjects, tmp_path, capsys):
    out = tmp_path / "cli_model.pt"
    assert main(["train-recon", "--data", str(subjects), "--layout", "subject", "--out", str(out),
                 "--steps", "1", "--batch", "2", "--device", "cpu"]) == 0
    assert "1 steps on 4 images" in capsys.readouterr().out
    assert load_model(out).options.height == 128
    # Truncated: the error names the file, exit 2, the file is left as it was.
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 3])
    assert main(["train-recon", "--data", str(subjects), "--layout", "subject", "--out", str(out),
                 "--steps", "2", "--batch", "2"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "cannot read model file" in err
    assert out.read_bytes() == data[: len(data) // 3]


def test_corrupt_or_foreign_model_files_are_named(tmp_path, template):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="junk.pt.*cannot read model file"):
        load_model(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(InputError, match="foreign.pt.*not a pointwear-recon-learned"):
        load_model(foreign)
    with pytest.raises(InputError, match="missing.pt.*does not exist"):
        load_model(tmp_path / "missing.pt")
    from pointwear.recon.learned import ReconNet
    good = save_checkpoint(tmp_path / "good.pt", ReconNet(template.arrays(), SMALL))
    blob = torch.load(good, weights_only=True)
    blob["state"]["shape_head.weight"] = torch.zeros(5, 5)
    torch.save(blob, tmp_path / "shapes.pt")
    with pytest.raises(InputError, match="shapes.pt.*malformed"):
        load_model(tmp_path / "shapes.pt")
    blob = torch.load(good, weights_only=True)
    blob["template"]["faces"] = blob["template"]["faces"] + 10_000
    torch.save(blob, tmp_path / "faces.pt")
    with pytest.raises(InputError, match="faces.pt.*malformed"):
        load_model(tmp_path / "faces.pt")


def test_predict_refuses_bad_images(template):
    from pointwear.recon.learned import ReconNet
    model = ReconNet(template.arrays(), SMALL).eval()
    rgb, mask = _person()
    with pytest.raises(InputError, match="mask is empty"):
        predict(model, rgb, np.zeros(mask.shape, bool))
    with pytest.raises(InputError, match="uint8"):
        predict(model, rgb, mask[:40])
    with pytest.raises(InputError, match="texture size"):
        predict(model, rgb, mask > 0, texture_size=(0, 16))
    assert predict(model, rgb, mask > 0, texture_size=(16, 8)).texture.shape == (16, 8, 3)
