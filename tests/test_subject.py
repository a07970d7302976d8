"""Subject folders: write -> read round trips, and every validation failure names file + field."""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pointwear.data.subject import (SmplParams, SubjectWarning, read_subject, write_subject)
from pointwear.errors import SubjectError


def make_data(rng: np.random.Generator, n: int = 3, h: int = 24, w: int = 32,
              with_labels: bool = True) -> dict:
    """A small random subject: frames, masks, labels, SMPL and a centred pinhole camera."""
    K = np.tile(np.array([[40.0, 0.0, w / 2], [0.0, 41.0, h / 2], [0.0, 0.0, 1.0]]), (n, 1, 1))
    K[:, 0, 0] += rng.uniform(0, 5, n)
    data = {
        "frames": [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)],
        "masks": [rng.random((h, w)) > 0.5 for _ in range(n)],
        "smpl": SmplParams(betas=rng.normal(size=10), global_orient=rng.normal(size=(n, 3)),
                           body_pose=rng.normal(size=(n, 69)) * 0.2,
                           transl=rng.normal(size=(n, 3)) + [0, 0, 3]),
        "K": K,
        "meta": {"body": "default", "gender": "female", "fps": 30.0, "source": "test",
                 "frame_ids": list(range(10, 10 + n)), "note": "extra keys survive"},
    }
    if with_labels:
        data["labels"] = [rng.integers(0, 3, (h, w)).astype(np.uint8) for _ in range(n)]
        data["label_names"] = {1: "top", 2: "bottom"}
    return data


def assert_round_trip(root: Path, data: dict) -> None:
    subject = read_subject(root)
    n = len(data["frames"])
    h, w = data["frames"][0].shape[:2]
    assert subject.num_frames == n and subject.image_size == (h, w)
    for i in range(n):
        frame = subject.frame(i)
        assert frame.dtype == np.uint8 and frame.shape == (h, w, 3)
        np.testing.assert_array_equal(frame, data["frames"][i])
        mask = subject.mask(i)
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, data["masks"][i])
        if "labels" in data:
            np.testing.assert_array_equal(subject.labels(i), data["labels"][i])
        else:
            assert subject.labels(i) is None
    smpl = data["smpl"]
    for name in ("betas", "global_orient", "body_pose", "transl"):
        got = getattr(subject.smpl, name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, getattr(smpl, name))
    np.testing.assert_array_equal(subject.smpl.full_pose,
                                  np.concatenate([smpl.global_orient, smpl.body_pose], 1))
    np.testing.assert_array_equal(subject.K, data["K"])
    for key, value in data["meta"].items():
        assert subject.meta[key] == value
    assert subject.meta["version"] == 1 and subject.meta["frames"] == n
    assert subject.meta["image_size"] == [h, w]
    assert subject.label_names == data.get("label_names", {})
    assert not subject.has_truth


def test_round_trip(tmp_path: Path) -> None:
    data = make_data(np.random.default_rng(0))
    root = write_subject(tmp_path / "subj", **data)
    assert_round_trip(root, data)
    assert not [p for p in root.rglob(".*")], "temporary files left behind"
    (root / "truth").mkdir()
    assert read_subject(root).has_truth


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 4), h=st.integers(1, 12), w=st.integers(1, 12),
       with_labels=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_round_trip_property(n: int, h: int, w: int, with_labels: bool, seed: int) -> None:
    data = make_data(np.random.default_rng(seed), n, h, w, with_labels)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", SubjectWarning)  # tiny random masks may be empty
        root = write_subject(Path(tmp) / "s", **data)
        assert_round_trip(root, data)


def test_rewrite_shorter_subject_prunes_stale_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    write_subject(tmp_path / "s", **make_data(rng, n=4))
    data = make_data(rng, n=2, with_labels=False)
    write_subject(tmp_path / "s", **data)
    assert_round_trip(tmp_path / "s", data)


def test_crash_mid_write_leaves_no_subject_and_no_half_files(tmp_path: Path) -> None:
    data = make_data(np.random.default_rng(2))

    class Exploding(list):
        def __getitem__(self, i):
            if i == 2:
                raise RuntimeError("simulated crash")
            return super().__getitem__(i)

    data["frames"] = Exploding(data["frames"])
    with pytest.raises(RuntimeError):
        write_subject(tmp_path / "s", **data)
    assert not [p for p in (tmp_path / "s").rglob(".*")]
    with pytest.raises(SubjectError) as err:
        read_subject(tmp_path / "s")
    assert err.value.field == "subject.json"


def test_writer_refuses_unrelated_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SubjectError, match="not a subject folder"):
        write_subject(tmp_path, **make_data(np.random.default_rng(3)))


def test_writer_rejects_bad_input_before_writing(tmp_path: Path) -> None:
    data = make_data(np.random.default_rng(4))
    data["K"][1, 1, 1] = -5.0
    with pytest.raises(SubjectError) as err:
        write_subject(tmp_path / "s", **data)
    assert err.value.field == "K[1]"
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------------------------
# Validation failures: each names the file and the field.


def _edit_npz(root: Path, edit: Callable[[dict], None]) -> None:
    with np.load(root / "smpl.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    with open(root / "smpl.npz", "wb") as fh:
        np.savez(fh, **arrays)


def _edit_json(root: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((root / "subject.json").read_text())
    edit(meta)
    (root / "subject.json").write_text(json.dumps(meta))


def _set(arrays: dict, key: str, index: tuple, value: float) -> None:
    arrays[key] = arrays[key].copy()
    arrays[key][index] = value


CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "mask removed": (lambda r: (r / "masks/000001.png").unlink(), "masks/000001.png", "masks"),
    "frame resized": (lambda r: Image.new("RGB", (31, 24)).save(r / "frames/000002.png"),
                      "frames/000002.png", "image_size"),
    "NaN in transl": (lambda r: _edit_npz(r, lambda a: _set(a, "transl", (1, 2), np.nan)),
                      "smpl.npz", "transl"),
    "inf in betas": (lambda r: _edit_npz(r, lambda a: _set(a, "betas", (0,), np.inf)),
                     "smpl.npz", "betas"),
    "body_pose width": (lambda r: _edit_npz(r, lambda a: a.update(body_pose=a["body_pose"][:, 3:])),
                        "smpl.npz", "body_pose"),
    "missing npz key": (lambda r: _edit_npz(r, lambda a: a.pop("global_orient")),
                        "smpl.npz", "global_orient"),
    "K negative fy": (lambda r: _edit_npz(r, lambda a: _set(a, "K", (1, 1, 1), -40.0)),
                      "smpl.npz", "K[1]"),
    "K last row": (lambda r: _edit_npz(r, lambda a: _set(a, "K", (2, 2, 2), 2.0)),
                   "smpl.npz", "K[2]"),
    "K principal point": (lambda r: _edit_npz(r, lambda a: _set(a, "K", (0, 0, 2), 100.0)),
                          "smpl.npz", "K[0]"),
    "K skew": (lambda r: _edit_npz(r, lambda a: _set(a, "K", (0, 0, 1), 3.0)),
               "smpl.npz", "K[0]"),
    "K NaN": (lambda r: _edit_npz(r, lambda a: _set(a, "K", (1, 0, 0), np.nan)),
              "smpl.npz", "K[1]"),
    "npz frame count": (lambda r: _edit_npz(r, lambda a: a.update(transl=a["transl"][:2])),
                        "smpl.npz", "transl"),
    "npz image_size": (lambda r: _edit_npz(r, lambda a: a.update(image_size=np.array([24, 30]))),
                       "smpl.npz", "image_size"),
    "npz not a zip": (lambda r: (r / "smpl.npz").write_bytes(b"junk"), "smpl.npz", "(file)"),
    "json key missing": (lambda r: _edit_json(r, lambda m: m.pop("gender")),
                         "subject.json", "gender"),
    "json bad gender": (lambda r: _edit_json(r, lambda m: m.update(gender="robot")),
                        "subject.json", "gender"),
    "json version": (lambda r: _edit_json(r, lambda m: m.update(version=2)),
                     "subject.json", "version"),
    "json invalid": (lambda r: (r / "subject.json").write_text("{not json"),
                     "subject.json", "(file)"),
    "json missing": (lambda r: (r / "subject.json").unlink(), "subject.json", "subject.json"),
    "json frames count": (lambda r: _edit_json(r, lambda m: m.update(frames=2, frame_ids=[1, 2])),
                          "smpl.npz", "global_orient"),
    "frame_ids count": (lambda r: _edit_json(r, lambda m: m.update(frame_ids=[1])),
                        "subject.json", "frame_ids"),
    "extra frame file": (lambda r: Image.new("RGB", (32, 24)).save(r / "frames/000003.png"),
                         "frames", "frames"),
    "label removed": (lambda r: (r / "labels/000000.png").unlink(), "labels/000000.png", "labels"),
    "label map in colour": (lambda r: Image.new("RGB", (32, 24)).save(r / "labels/000001.png"),
                            "labels/000001.png", "mode"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_failure_names_file_and_field(tmp_path: Path, case: str) -> None:
    mutate, file_part, field = CASES[case]
    root = write_subject(tmp_path / "s", **make_data(np.random.default_rng(5)))
    mutate(root)
    with pytest.raises(SubjectError) as err:
        read_subject(root)
    message = str(err.value)
    assert file_part in (err.value.file or ""), message
    assert err.value.field == field, message
    assert field in message and file_part in message


def test_non_binary_mask_warns(tmp_path: Path) -> None:
    root = write_subject(tmp_path / "s", **make_data(np.random.default_rng(6)))
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))
    Image.fromarray(ramp).save(root / "masks/000001.png")
    with pytest.warns(SubjectWarning, match=r"not binary.*000001\.png"):
        subject = read_subject(root)
    np.testing.assert_array_equal(subject.mask(1), ramp > 127)


def test_empty_mask_warns_naming_frame(tmp_path: Path) -> None:
    data = make_data(np.random.default_rng(7))
    data["masks"][2] = np.zeros((24, 32), bool)
    root = write_subject(tmp_path / "s", **data)
    with pytest.warns(SubjectWarning, match=r"empty.*000002\.png"):
        read_subject(root)


def test_clean_subject_does_not_warn(tmp_path: Path) -> None:
    root = write_subject(tmp_path / "s", **make_data(np.random.default_rng(8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_subject(root)


def test_other_image_layouts_are_normalised(tmp_path: Path) -> None:
    """16-bit and RGB masks threshold at half range; RGBA and grey frames become RGB."""
    data = make_data(np.random.default_rng(9), with_labels=False)
    root = write_subject(tmp_path / "s", **data)
    m16 = np.zeros((24, 32), np.uint16)
    m16[:, :10] = 65535
    m16[:, 10:12] = 30000  # below half of 65535: off
    m16[:, 12:14] = 40000  # above half: on
    Image.fromarray(m16).save(root / "masks/000000.png")
    rgb_mask = np.zeros((24, 32, 3), np.uint8)
    rgb_mask[5:9, :, 1] = 255
    Image.fromarray(rgb_mask).save(root / "masks/000001.png")
    rgba = np.dstack([data["frames"][0], np.full((24, 32), 7, np.uint8)])
    Image.fromarray(rgba).save(root / "frames/000000.png")
    grey = data["frames"][1][..., 0]
    Image.fromarray(grey).save(root / "frames/000001.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SubjectWarning)
        subject = read_subject(root)
    expected16 = np.zeros((24, 32), bool)
    expected16[:, :10] = expected16[:, 12:14] = True
    np.testing.assert_array_equal(subject.mask(0), expected16)
    np.testing.assert_array_equal(subject.mask(1), rgb_mask.max(2) > 127)
    np.testing.assert_array_equal(subject.frame(0), data["frames"][0])
    np.testing.assert_array_equal(subject.frame(1), np.repeat(grey[..., None], 3, 2))


def test_check_images_false_defers_size_check_to_load(tmp_path: Path) -> None:
    root = write_subject(tmp_path / "s", **make_data(np.random.default_rng(10)))
    Image.new("RGB", (10, 10)).save(root / "frames/000001.png")
    subject = read_subject(root, check_images=False)
    subject.frame(0)
    with pytest.raises(SubjectError) as err:
        subject.frame(1)
    assert err.value.field == "image_size" and "000001.png" in err.value.file
