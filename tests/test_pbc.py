"""PBC sample layout -> subject folder, with restricted unpickling of their SMPL .pkl files."""
from __future__ import annotations

import collections
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pointwear.data.pbc import convert_pbc, decode_pbc_segm, load_pbc_pickle, pbc_intrinsics
from pointwear.data.subject import read_subject
from pointwear.errors import SubjectError

PID = "female-3-casual"
H, W = 21, 31  # odd sizes, so W // 2 and (W - 1) / 2 differ
FRAME_NUMBERS = [7, 8, 9]
COLOURS = [(255, 85, 0), (0, 0, 85), (0, 128, 0)]  # Graphonomy-style label colours


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python-2 `str` (BINSTRING), as a Python 2 pickle of numpy arrays does."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_pkl(path: Path, data: dict, style: str) -> None:
    with open(path, "wb") as fh:
        if style == "py2":
            Py2Pickler(fh, protocol=2).dump(data)
        else:
            pickle.dump(data, fh, protocol=2)


def make_pbc(root: Path, rng: np.random.Generator, betas_jitter: float = 0.0) -> dict:
    """A PBC-style folder: RGB frames, colour segmentations, mixed-style pickles."""
    dirs = {name: root / name / PID for name in ("rgb", "segm_cloth", "smpl")}
    for d in dirs.values():
        d.mkdir(parents=True)
    betas = rng.normal(size=10).astype(np.float32)
    truth: dict = {"frames": [], "masks": [], "poses": [], "transl": [], "betas": []}
    for j, k in enumerate(FRAME_NUMBERS):
        frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(frame).save(dirs["rgb"] / f"{k:06d}.png")
        segm = np.zeros((H, W, 3), np.uint8)
        labels = rng.integers(0, 4, (H, W))
        for c, colour in enumerate(COLOURS, start=1):
            segm[labels == c] = colour
        Image.fromarray(segm).save(dirs["segm_cloth"] / f"{k:06d}.png")
        pose = (rng.normal(size=72) * 0.3).astype(np.float32)
        transl = np.array([0.1 * j, 0.2, 8.0], np.float32)
        b = betas + betas_jitter * j
        if j == 1:  # Python-2 style, flat shapes, float64, extra keys
            data = {"betas": b.astype(np.float64), "transl": transl.astype(np.float64),
                    "full_pose_aa": pose.astype(np.float64), "vertices": np.zeros((5, 3))}
            write_pkl(dirs["smpl"] / f"{k:06d}.pkl", data, "py2")
        else:  # Python 3 protocol 2, (1, n) shapes as SMPLify writes them
            data = collections.OrderedDict(betas=b[None], transl=transl[None],
                                           full_pose_aa=pose[None])
            write_pkl(dirs["smpl"] / f"{k:06d}.pkl", dict(data) if j else data, "py3")
        truth["frames"].append(frame)
        truth["masks"].append(labels > 0)
        truth["poses"].append(pose)
        truth["transl"].append(transl)
        truth["betas"].append(b)
    return truth


def test_intrinsics_follow_pbc_floor_division() -> None:
    K = pbc_intrinsics(H, W)
    np.testing.assert_array_equal(K, [[5000, 0, 15], [0, 5000, 10], [0, 0, 1]])


def test_convert_reads_back_as_valid_subject(tmp_path: Path) -> None:
    truth = make_pbc(tmp_path / "pbc", np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # identical betas, clean masks: no warnings at all
        out = convert_pbc(tmp_path / "pbc", PID, tmp_path / "subject", gender="female", fps=30)
        subject = read_subject(out)
    assert subject.num_frames == 3 and subject.image_size == (H, W)
    assert subject.meta["source"] == f"pbc:{PID}"
    assert subject.meta["frame_ids"] == FRAME_NUMBERS
    assert subject.meta["gender"] == "female" and subject.meta["fps"] == 30.0
    assert subject.meta["body"] == "default"
    for i in range(3):
        np.testing.assert_array_equal(subject.K[i], pbc_intrinsics(H, W))
        np.testing.assert_array_equal(subject.frame(i), truth["frames"][i])
        np.testing.assert_array_equal(subject.mask(i), truth["masks"][i])
    np.testing.assert_allclose(subject.smpl.full_pose, np.stack(truth["poses"]), atol=1e-7)
    np.testing.assert_allclose(subject.smpl.transl, np.stack(truth["transl"]), atol=1e-7)
    np.testing.assert_allclose(subject.smpl.betas, truth["betas"][0], atol=1e-7)


def test_convert_selected_frames(tmp_path: Path) -> None:
    truth = make_pbc(tmp_path / "pbc", np.random.default_rng(1))
    subject = read_subject(convert_pbc(tmp_path / "pbc", PID, tmp_path / "s", frames=[9, 8]))
    assert subject.meta["frame_ids"] == [8, 9]
    np.testing.assert_array_equal(subject.frame(0), truth["frames"][1])
    np.testing.assert_allclose(subject.smpl.full_pose[1], truth["poses"][2], atol=1e-7)
    with pytest.raises(SubjectError) as err:
        convert_pbc(tmp_path / "pbc", PID, tmp_path / "s2", frames=[8, 11])
    assert err.value.file.endswith("rgb/female-3-casual/000011.png")


def test_differing_betas_warn_and_average(tmp_path: Path) -> None:
    truth = make_pbc(tmp_path / "pbc", np.random.default_rng(2), betas_jitter=0.01)
    with pytest.warns(UserWarning, match=r"betas differ.*spread 0\.02"):
        out = convert_pbc(tmp_path / "pbc", PID, tmp_path / "s")
    np.testing.assert_allclose(read_subject(out).smpl.betas, np.mean(truth["betas"], 0),
                               atol=1e-6)


@pytest.mark.parametrize("folder,suffix", [("segm_cloth", ".png"), ("smpl", ".pkl")])
def test_missing_companion_file_is_named(tmp_path: Path, folder: str, suffix: str) -> None:
    make_pbc(tmp_path / "pbc", np.random.default_rng(3))
    missing = tmp_path / "pbc" / folder / PID / f"000008{suffix}"
    missing.unlink()
    with pytest.raises(SubjectError) as err:
        convert_pbc(tmp_path / "pbc", PID, tmp_path / "s")
    assert err.value.file == str(missing) and err.value.field == folder
    assert not (tmp_path / "s").exists(), "nothing is written before the inputs check out"


def test_bad_pickle_shape_names_file_and_key(tmp_path: Path) -> None:
    make_pbc(tmp_path / "pbc", np.random.default_rng(4))
    bad = tmp_path / "pbc" / "smpl" / PID / "000009.pkl"
    write_pkl(bad, {"betas": np.zeros(10), "transl": np.zeros(3),
                    "full_pose_aa": np.zeros(69)}, "py3")
    with pytest.raises(SubjectError) as err:
        convert_pbc(tmp_path / "pbc", PID, tmp_path / "s")
    assert err.value.file == str(bad) and err.value.field == "full_pose_aa"


def test_pickle_with_non_numpy_global_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"betas": np.zeros(10), "hook": os.getcwd}, fh, protocol=2)
    with pytest.raises(SubjectError, match="only numpy arrays") as err:
        load_pbc_pickle(path)
    assert err.value.file == str(path) and "getcwd" in err.value.field
    # The classic exploit: a REDUCE of os.system must never reach its call.
    path.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85q\x01Rq\x02.")
    with pytest.raises(SubjectError, match="refusing"):
        load_pbc_pickle(path)


def test_both_pickle_styles_load_as_numpy(tmp_path: Path) -> None:
    arrays = {"betas": np.arange(10.0), "full_pose_aa": np.ones((1, 72), np.float32)}
    for style in ("py2", "py3"):
        write_pkl(tmp_path / f"{style}.pkl", arrays, style)
        got = load_pbc_pickle(tmp_path / f"{style}.pkl")
        np.testing.assert_array_equal(got["betas"], arrays["betas"])
        assert got["full_pose_aa"].dtype == np.float32


def test_graphonomy_rgba_segmentation_is_clothing_minus_hair() -> None:
    """PBC's segmenter writes alpha = clothing + hair probability and red = hair."""
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[0, :, 3] = 255            # clothing only
    rgba[1, :, [0, 3]] = 255       # hair only: alpha - red = 0
    rgba[2, :, 3] = 200            # confident clothing
    rgba[2, :, 0] = 20
    rgba[3, :, 3] = 100            # unsure: below half
    mask = decode_pbc_segm(Image.fromarray(rgba))
    np.testing.assert_array_equal(mask[:, 0], [True, False, True, False])
    grey = Image.fromarray(np.array([[0, 100, 200]], np.uint8))
    np.testing.assert_array_equal(decode_pbc_segm(grey), [[False, False, True]])
