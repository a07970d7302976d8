"""Reader for the Point-Based Clothing (PBC) sample layout, converted into a subject folder.

PBC (SamsungLabs/point_based_clothing, configs/outfit_code/psp.yaml) keeps one folder per
person id under three roots::

    rgb/<pid>/000123.png          frame (their loader falls back to .jpg)
    segm_cloth/<pid>/000123.png   clothing segmentation
    smpl/<pid>/000123.pkl         dict with betas (10,)|(1,10), transl (3,)|(1,3),
                                  full_pose_aa (72,)|(1,72) (and more we do not need)

Their camera is fixed: focal 5000 px and the principal point at (W // 2, H // 2).
"""
from __future__ import annotations

import importlib
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import SubjectError
from .subject import SmplParams, image_to_mask_values, image_to_rgb, write_subject

PBC_FOCAL = 5000.0
# A colour segmentation pixel counts as clothing when any channel exceeds this (out of 255):
# "non-black", with a little room for noise. Dark label colours such as (0, 0, 85) still count.
NONBLACK_TOLERANCE = 10
# Betas that differ by more than this between frames trigger a warning (we use the mean).
BETAS_SPREAD_TOLERANCE = 1e-6

_FRAME_STEM = re.compile(r"^\d+$")
_RGB_SUFFIXES = (".png", ".jpg", ".jpeg")

# The only globals a PBC .pkl may reference: what pickling numpy arrays/scalars needs.
# `_codecs.encode` is how Python 3 stores bytes in protocol-2 pickles; OrderedDict is plain data.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


def pbc_intrinsics(height: int, width: int) -> np.ndarray:
    """PBC's camera for an HxW image.

    PBC's make_K (src/dataloaders/loaders/psp_loader.py and internet_images_loader.py) sets
    fx = fy = 5000 and cx = W // 2, cy = H // 2 (integer floor division), not (W - 1) / 2;
    we follow them so their SMPL fits project where they did.
    """
    return np.array([[PBC_FOCAL, 0.0, float(width // 2)],
                     [0.0, PBC_FOCAL, float(height // 2)],
                     [0.0, 0.0, 1.0]], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Pickles


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array globals; anything else is refused."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: Python-2 pickles of numpy arrays
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        # numpy 2 writes numpy._core.*; numpy 1.x writes numpy.core.* -- accept both spellings.
        canonical = module.replace("numpy._core", "numpy.core", 1)
        if (canonical, name) not in _ALLOWED_GLOBALS:
            raise SubjectError(f"refusing to unpickle global {module}.{name}: a PBC .pkl may "
                               "hold only numpy arrays", file=self._path, field=f"{module}.{name}",
                               hint="re-save the file as a plain dict of numpy arrays")
        spellings = (module, canonical, canonical.replace("numpy.core", "numpy._core", 1))
        for candidate in dict.fromkeys(spellings):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise SubjectError(f"cannot resolve {module}.{name} with this numpy", file=self._path,
                           field=f"{module}.{name}")


def load_pbc_pickle(path: Path) -> dict[str, Any]:
    """Load one PBC SMPL .pkl (Python 2 or 3) allowing numpy arrays only."""
    try:
        with open(path, "rb") as fh:
            data = _NumpyOnlyUnpickler(fh, path).load()
    except SubjectError:
        raise
    except Exception as exc:  # truncated or garbled pickles raise many exception types
        raise SubjectError(f"cannot unpickle: {exc}", file=path, field="(file)") from exc
    if not isinstance(data, dict):
        raise SubjectError(f"expected a dict, got {type(data).__name__}", file=path,
                           field="(top level)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


def _pbc_vector(data: dict, key: str, size: int | None, path: Path) -> np.ndarray:
    """`key` as a 1-D float vector; accepts (n,) and (1, n); size None = any n >= 1."""
    if key not in data:
        raise SubjectError(f"missing key {key!r} (has: {', '.join(map(str, data))})", file=path,
                           field=key)
    try:
        arr = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SubjectError(f"not numeric: {exc}", file=path, field=key) from exc
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.shape[0] < 1 or (size is not None and arr.shape[0] != size):
        want = f"({size},) or (1, {size})" if size else "(S,) or (1, S)"
        raise SubjectError(f"shape {np.shape(data[key])}, expected {want}", file=path, field=key)
    if not np.isfinite(arr).all():
        raise SubjectError("contains NaN or inf", file=path, field=key)
    return arr


# --------------------------------------------------------------------------------------------
# Segmentations


def decode_pbc_segm(img: Image.Image, path: Path | None = None) -> np.ndarray:
    """Clothing mask (H, W) bool from a PBC segmentation image.

    - RGBA with real transparency: the layout of PBC's Graphonomy fork, where alpha is the
      summed probability of clothing + hair and red is hair; PBC's loader takes
      last channel - first channel. We do the same (clipped at 0) and threshold at 50 %.
    - RGB / palette / opaque RGBA colour maps: clothing is any non-black pixel.
    - Grey (8- or 16-bit): a mask, thresholded at half its range.
    """
    if img.mode == "RGBA":
        rgba = np.asarray(img, dtype=np.int16)
        if rgba[..., 3].min() < 255:
            return (rgba[..., 3] - rgba[..., 0]).clip(0, 255) > 127
    if img.mode in ("RGB", "RGBA", "P", "PA"):
        return image_to_rgb(img, path).max(axis=2) > NONBLACK_TOLERANCE
    values, full = image_to_mask_values(img, path)
    return values > 0.5 * full


# --------------------------------------------------------------------------------------------
# Converter


def convert_pbc(src: str | Path, pid: str, out: str | Path, *, body: str = "default",
                gender: str = "neutral", fps: float = 25.0,
                frames: Sequence[int] | None = None) -> Path:
    """Convert PBC's `<src>/{rgb,segm_cloth,smpl}/<pid>/` into a subject folder at `out`.

    `frames` selects original frame numbers (default: every frame in rgb/<pid>). Every needed
    file is checked before anything is written; images are then streamed one at a time.
    """
    src = Path(src)
    rgb_paths = _select_frames(src / "rgb" / pid, frames)
    numbers = sorted(rgb_paths)
    segm_paths = {k: _companion(src / "segm_cloth" / pid, rgb_paths[k], ".png", "segmentation")
                  for k in numbers}
    pkl_paths = {k: _companion(src / "smpl" / pid, rgb_paths[k], ".pkl", "SMPL pickle")
                 for k in numbers}
    height, width = _common_size([rgb_paths[k] for k in numbers],
                                 [segm_paths[k] for k in numbers])
    smpl = _read_pbc_smpl([pkl_paths[k] for k in numbers])
    K = np.repeat(pbc_intrinsics(height, width)[None], len(numbers), axis=0)
    meta = {"body": body, "gender": gender, "fps": float(fps), "source": f"pbc:{pid}",
            "frame_ids": numbers}
    return write_subject(
        out,
        frames=_Lazy([rgb_paths[k] for k in numbers], _load_rgb),
        masks=_Lazy([segm_paths[k] for k in numbers], _load_segm),
        smpl=smpl, K=K, meta=meta)


def _select_frames(rgb_dir: Path, frames: Sequence[int] | None) -> dict[int, Path]:
    """Original frame number -> rgb file, for all frames or the requested ones."""
    if not rgb_dir.is_dir():
        raise SubjectError("PBC rgb folder is missing", file=rgb_dir, field="rgb",
                           hint="expected <src>/rgb/<pid>/%06d.png")
    found: dict[int, Path] = {}
    for path in sorted(rgb_dir.iterdir()):
        if path.suffix.lower() in _RGB_SUFFIXES and _FRAME_STEM.match(path.stem):
            found.setdefault(int(path.stem), path)  # sorted: .jpeg < .jpg < .png
    if frames is None:
        if not found:
            raise SubjectError("no numbered frames found", file=rgb_dir, field="rgb")
        return found
    picked: dict[int, Path] = {}
    for k in frames:
        if int(k) not in found:
            raise SubjectError(f"requested frame {int(k)} is missing", field="rgb",
                               file=rgb_dir / f"{int(k):06d}.png")
        picked[int(k)] = found[int(k)]
    if not picked:
        raise SubjectError("no frames selected", file=rgb_dir, field="frames")
    return picked


def _companion(folder: Path, rgb_path: Path, suffix: str, what: str) -> Path:
    """The segmentation / pickle file of a frame (same stem as its rgb file)."""
    path = folder / f"{rgb_path.stem}{suffix}"
    if not path.is_file():
        raise SubjectError(f"{what} for frame {rgb_path.name} is missing", file=path,
                           field=folder.parent.name)
    return path


def _common_size(rgb: list[Path], segm: list[Path]) -> tuple[int, int]:
    """(H, W) shared by every rgb and segmentation image (header reads only)."""
    size: tuple[int, int] | None = None
    for path in rgb + segm:
        try:
            with Image.open(path) as img:
                this = (img.height, img.width)
        except (OSError, ValueError) as exc:
            raise SubjectError(f"cannot read image: {exc}", file=path, field="(file)") from exc
        if size is None:
            size = this
        elif this != size:
            raise SubjectError(f"image is {this[0]}x{this[1]} but {rgb[0].name} is "
                               f"{size[0]}x{size[1]} (HxW)", file=path, field="image_size")
    assert size is not None
    return size


def _read_pbc_smpl(paths: list[Path]) -> SmplParams:
    betas, poses, transl = [], [], []
    for path in paths:
        data = load_pbc_pickle(path)
        b = _pbc_vector(data, "betas", None, path)
        if betas and b.shape != betas[0].shape:
            raise SubjectError(f"{b.shape[0]} betas but {paths[0].name} has {betas[0].shape[0]}",
                               file=path, field="betas")
        betas.append(b)
        poses.append(_pbc_vector(data, "full_pose_aa", 72, path))
        transl.append(_pbc_vector(data, "transl", 3, path))
    stacked = np.stack(betas)
    spread = stacked.max(axis=0) - stacked.min(axis=0)
    if spread.max() > BETAS_SPREAD_TOLERANCE:
        j = int(spread.argmax())
        warnings.warn(f"{paths[0].parent}: betas differ between frames (max spread "
                      f"{spread[j]:.4g} in beta[{j}]); using their mean", UserWarning,
                      stacklevel=3)
    pose = np.stack(poses)
    return SmplParams(betas=stacked.mean(axis=0), global_orient=pose[:, :3],
                      body_pose=pose[:, 3:], transl=np.stack(transl))


def _load_rgb(path: Path) -> np.ndarray:
    with _open(path) as img:
        return image_to_rgb(img, path)


def _load_segm(path: Path) -> np.ndarray:
    with _open(path) as img:
        return decode_pbc_segm(img, path)


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, ValueError) as exc:
        raise SubjectError(f"cannot read image: {exc}", file=path, field="(file)") from exc


class _Lazy(Sequence[np.ndarray]):
    """Images loaded on access, so a long sequence is never held in memory at once."""

    def __init__(self, paths: list[Path], load: Callable[[Path], np.ndarray]) -> None:
        self._paths = paths
        self._load = load

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._load(p) for p in self._paths[i]]
        return self._load(self._paths[i])
