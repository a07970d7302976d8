"""Read a user's SMPL body model into plain numpy arrays, without chumpy.

Accepted inputs (see `read_smpl_file`):

- the official SMPL ``.pkl`` (a Python-2 pickle whose arrays may be chumpy ``Ch`` objects and
  whose ``J_regressor`` is a ``scipy.sparse`` matrix),
- an ``.npz`` holding the same keys,
- a folder in smplx's layout (``smpl/SMPL_NEUTRAL.pkl`` ...) or holding the official file names.

Pickles are read by a restricted unpickler: it resolves only numpy's array/dtype rebuilders,
scipy's csc/csr/coo classes, a few harmless builtins, and every ``chumpy.*`` class, which it
maps to an inert stand-in that keeps the pickled state. chumpy is never imported. Any other global
(``os.system``, ``builtins.eval``, ...) is refused before it can be called, so a pickle cannot run
code. A chumpy ``Ch`` pickles with the default object protocol (``NEWOBJ`` + ``BUILD``) and its
``__getstate__`` is its ``__dict__`` minus ``_parents`` and ``_cache``; the value of a plain
``chumpy.ch.Ch`` is the ndarray under the key ``x`` (its ``compute_r`` returns ``self.x``).

Corrupt or hostile files must fail with an error, never crash or exhaust the process: the opcodes
are walked in pure Python first (chunk lengths, memo indices, no buffer / persistent-id / extension
opcodes), allowed callables that could allocate on request are bounded, mutable globals are
handed out as per-load copies, and sparse matrices are densified in numpy from bounds-checked raw
parts (scipy's ``toarray`` writes out of bounds on corrupt indices).

Every array then goes through `validate_smpl_arrays`, which checks keys, shapes, joint count,
finiteness, face indices, skin weights and the kinematic tree, and raises
`pointwear.errors.BodyModelError` naming the file and the field at fault.
"""
from __future__ import annotations

import codecs
import io
import math
import operator
import os
import pickle
import pickletools
import types
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from ..errors import BodyModelError
from .joints import JOINT_NAMES, NUM_JOINTS

__all__ = ["SMPL_KEYS", "GENDERS", "read_smpl_file", "validate_smpl_arrays", "find_smpl_file",
           "smpl_file_candidates"]

SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
GENDERS = ("neutral", "male", "female")

NUM_POSE_BASIS = 9 * (NUM_JOINTS - 1)        # 207: one 3x3 rotation per non-root joint
WEIGHT_SUM_TOLERANCE = 1e-3
ROOT_PARENT_VALUES = (-1, 2 ** 32 - 1)      # SMPL files store the root's parent as uint32(-1)

_MAX_NESTING = 8
_MAX_VERTICES = 200_000             # SMPL has 6890 vertices, SMPL-X 10475
_MAX_DENSE_ELEMENTS = 64 * _MAX_VERTICES   # a densified J_regressor larger than this is not a body
_MAX_ARRAY_ELEMENTS = 32 << 20    # the largest array of a body model: posedirs of SMPL-X, 15 M
_MAX_NPZ_BYTES = 2 ** 30           # SMPL's arrays unpack to ~50 MB, SMPL-X's to a few hundred
_MAX_FILE_BYTES = 2 ** 30          # the official SMPL .pkl files are 37-250 MB

_LAYOUT_HINT = ("pass the .pkl/.npz file itself, or a folder laid out like smplx's model folder: "
                "DIR/smpl/SMPL_NEUTRAL.pkl, DIR/smpl/SMPL_MALE.pkl, DIR/smpl/SMPL_FEMALE.pkl")
_REDOWNLOAD_HINT = "re-download the model from https://smpl.is.tue.mpg.de or re-export it"


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def read_smpl_file(path: str | Path, gender: str = "neutral") -> dict[str, np.ndarray]:
    """Read an SMPL model (.pkl, .npz, or a folder chosen by `gender`) into validated arrays.

    Returns float32 ``v_template (V,3)``, ``shapedirs (V,3,S)``, ``posedirs (V,3,207)``,
    ``J_regressor (24,V)`` (dense), ``weights (V,24)`` and int64 ``kintree_table (2,24)``,
    ``f (F,3)``. Extra keys of an ``.npz`` are passed through untouched; the extra keys of an
    official ``.pkl`` (``J``, ``bs_style``, ``weights_prior``, ...) are dropped.
    """
    gender = _check_gender(gender, path)
    path = Path(path).expanduser()
    if not path.exists():
        raise BodyModelError("no such file or folder", file=path,
                             hint="give the path of an SMPL .pkl/.npz file or of a model folder; "
                                  + _LAYOUT_HINT)
    file = find_smpl_file(path, gender) if path.is_dir() else path
    return validate_smpl_arrays(_read_raw(file), file)


def find_smpl_file(folder: str | Path, gender: str = "neutral") -> Path:
    """The model file for `gender` inside `folder` (smplx layout or official SMPL names)."""
    gender = _check_gender(gender, folder)
    folder = Path(folder).expanduser()
    candidates = smpl_file_candidates(gender)
    listings: dict[Path, dict[str, str]] = {}
    for rel in candidates:
        sub = folder.joinpath(*rel.split("/")[:-1])
        if sub not in listings:
            listings[sub] = _listing(sub)
        actual = listings[sub].get(rel.rsplit("/", 1)[-1].lower())
        if actual is not None and (sub / actual).is_file():
            return sub / actual
    raise BodyModelError(
        f"no SMPL model for gender '{gender}' in this folder; looked for: " + ", ".join(candidates),
        file=folder, field="gender", hint=_LAYOUT_HINT)


def smpl_file_candidates(gender: str) -> list[str]:
    """Relative paths (case-insensitive file names) tried for `gender`, in order of preference."""
    gender = _check_gender(gender, None)
    upper = gender.upper()
    official = {
        "neutral": ["basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl",
                    "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"],
        "male": ["basicmodel_m_lbs_10_207_0_v1.1.0.pkl", "basicModel_m_lbs_10_207_0_v1.0.0.pkl"],
        "female": ["basicmodel_f_lbs_10_207_0_v1.1.0.pkl", "basicModel_f_lbs_10_207_0_v1.0.0.pkl"],
    }[gender]
    out: list[str] = []
    for prefix in ("smpl/", ""):
        out += [f"{prefix}SMPL_{upper}.pkl", f"{prefix}SMPL_{upper}.npz"]
    for prefix in ("", "smpl/", "models/", "smpl/models/"):
        out += [prefix + name for name in official]
    return out


def validate_smpl_arrays(arrays: Mapping[str, Any], source: str | Path) -> dict[str, np.ndarray]:
    """Check an SMPL model's arrays and return them normalised.

    `arrays` may hold ndarrays, scipy.sparse matrices (``J_regressor``), chumpy stand-ins from
    the reader, or anything ``np.asarray`` understands. The seven `SMPL_KEYS` come back as
    contiguous float32 / int64 arrays; any other key is passed through untouched. Raises
    `BodyModelError(message, file=source, field=key, hint=...)` on the first problem found.
    """
    if not isinstance(arrays, Mapping):
        raise BodyModelError(f"expected a mapping of SMPL arrays, got {type(arrays).__name__}",
                             file=source, hint=_REDOWNLOAD_HINT)
    missing = [k for k in SMPL_KEYS if k not in arrays]
    if missing:
        present = ", ".join(sorted(str(k) for k in arrays)) or "nothing"
        raise BodyModelError(
            f"missing from the model (it has: {present})", file=source, field=", ".join(missing),
            hint="an SMPL model needs " + ", ".join(SMPL_KEYS))

    raw = {k: _to_ndarray(arrays[k], source, k) for k in SMPL_KEYS}
    out = {k: v for k, v in arrays.items() if k not in SMPL_KEYS}

    # Reference vertex count from the template; every other key must agree with it.
    v_template = _as_float(raw["v_template"], source, "v_template")
    if v_template.ndim != 2 or v_template.shape[1] != 3 or v_template.shape[0] < 1:
        raise BodyModelError(f"expected (V, 3), got {_fmt(v_template.shape)}",
                             file=source, field="v_template", hint=_REDOWNLOAD_HINT)
    nv = v_template.shape[0]
    out["v_template"] = v_template

    # Joint count first: a SMPL-H / SMPL-X file fails here with the clearest message.
    kintree = _as_int(raw["kintree_table"], source, "kintree_table")
    _expect_shape(kintree, (2, NUM_JOINTS), "(2, 24)", source, "kintree_table", joints_axis=1)
    _check_tree(kintree, source)
    out["kintree_table"] = kintree

    j_regressor = _as_float(raw["J_regressor"], source, "J_regressor")
    _expect_shape(j_regressor, (NUM_JOINTS, nv), f"(24, V) with V={nv} from v_template",
                  source, "J_regressor", joints_axis=0)
    out["J_regressor"] = j_regressor

    weights = _as_float(raw["weights"], source, "weights")
    _expect_shape(weights, (nv, NUM_JOINTS), f"(V, 24) with V={nv} from v_template",
                  source, "weights", joints_axis=1)
    _check_weights(weights, source)
    out["weights"] = weights

    shapedirs = _as_float(raw["shapedirs"], source, "shapedirs")
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (nv, 3):
        raise BodyModelError(
            f"expected (V, 3, S) with V={nv} from v_template, got {_fmt(shapedirs.shape)}",
            file=source, field="shapedirs", hint=_REDOWNLOAD_HINT)
    if shapedirs.shape[2] < 1:
        raise BodyModelError(
            f"expected at least one shape blend shape (V, 3, S) with S >= 1, "
            f"got {_fmt(shapedirs.shape)}", file=source, field="shapedirs", hint=_REDOWNLOAD_HINT)
    out["shapedirs"] = shapedirs

    posedirs = _as_float(raw["posedirs"], source, "posedirs")
    if posedirs.shape != (nv, 3, NUM_POSE_BASIS):
        raise BodyModelError(
            f"expected (V, 3, {NUM_POSE_BASIS}) with V={nv} from v_template "
            f"({NUM_POSE_BASIS} = 9 x 23 pose blend shapes of the 24-joint body), "
            f"got {_fmt(posedirs.shape)}", file=source, field="posedirs", hint=_REDOWNLOAD_HINT)
    out["posedirs"] = posedirs

    faces = _as_int(raw["f"], source, "f")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] < 1:
        raise BodyModelError(f"expected (F, 3) triangle indices, got {_fmt(faces.shape)}",
                             file=source, field="f", hint=_REDOWNLOAD_HINT)
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= nv:
        bad = int(np.count_nonzero((faces < 0) | (faces >= nv)))
        raise BodyModelError(
            f"face indices must lie in [0, {nv - 1}] (V={nv} from v_template), got values in "
            f"[{lo}, {hi}] ({bad} out of range)", file=source, field="f", hint=_REDOWNLOAD_HINT)
    out["f"] = faces
    return out


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------

def _check_gender(gender: str, source: str | Path | None) -> str:
    g = str(gender).strip().lower()
    if g not in GENDERS:
        raise BodyModelError(f"unknown gender {gender!r}; expected one of {', '.join(GENDERS)}",
                             file=source, field="gender")
    return g


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _expect_shape(a: np.ndarray, shape: tuple[int, ...], what: str, source, field: str,
                  joints_axis: int) -> None:
    if a.shape == shape:
        return
    msg = f"expected {what}, got {_fmt(a.shape)}"
    hint = _REDOWNLOAD_HINT
    if a.ndim == len(shape) and a.shape[joints_axis] != NUM_JOINTS:
        msg += f": {a.shape[joints_axis]} joints, but SMPL has {NUM_JOINTS}"
        hint = ("Pointwear takes the 24-joint SMPL body; SMPL-H / SMPL-X / MANO files have "
                "another joint count")
    raise BodyModelError(msg, file=source, field=field, hint=hint)


def _check_tree(kintree: np.ndarray, source) -> None:
    parents, ids = kintree[0], kintree[1]
    if not np.array_equal(ids, np.arange(NUM_JOINTS)):
        raise BodyModelError(
            f"row 1 must list the joints 0..{NUM_JOINTS - 1} in order, got {ids.tolist()}",
            file=source, field="kintree_table", hint=_REDOWNLOAD_HINT)
    if int(parents[0]) not in ROOT_PARENT_VALUES:
        raise BodyModelError(
            f"joint 0 ({JOINT_NAMES[0]}) must be the root (parent -1 or 4294967295), "
            f"got parent {int(parents[0])}", file=source, field="kintree_table",
            hint=_REDOWNLOAD_HINT)
    for j in range(1, NUM_JOINTS):
        p = int(parents[j])
        if not 0 <= p < j:
            raise BodyModelError(
                f"joint {j} ({JOINT_NAMES[j]}) has parent {p}; the parents must form a tree "
                f"rooted at joint 0 with every parent index smaller than its child's",
                file=source, field="kintree_table", hint=_REDOWNLOAD_HINT)


def _check_weights(weights: np.ndarray, source) -> None:
    sums = weights.astype(np.float64).sum(axis=1)
    off = np.abs(sums - 1.0) > WEIGHT_SUM_TOLERANCE
    if off.any():
        row = int(np.argmax(off))
        raise BodyModelError(
            f"skin weights of each vertex must sum to 1 (within {WEIGHT_SUM_TOLERANCE:g}); "
            f"row {row} sums to {sums[row]:.6g} ({int(off.sum())} of {len(sums)} rows are off)",
            file=source, field="weights", hint=_REDOWNLOAD_HINT)
    neg = weights < -WEIGHT_SUM_TOLERANCE
    if neg.any():
        row, col = (int(i) for i in np.argwhere(neg)[0])
        raise BodyModelError(
            f"skin weights must not be negative; weights[{row}, {col}] = {weights[row, col]:.6g}",
            file=source, field="weights", hint=_REDOWNLOAD_HINT)


def _numeric(a: np.ndarray, source, field: str) -> None:
    if a.dtype.kind not in "biuf":
        raise BodyModelError(f"expected a numeric array, got dtype {a.dtype}", file=source,
                             field=field, hint=_REDOWNLOAD_HINT)


def _check_finite(a: np.ndarray, source, field: str, note: str = "") -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise BodyModelError(
            f"contains {int(bad.sum())} NaN/inf value(s){note}, first at index {first}",
            file=source, field=field, hint=_REDOWNLOAD_HINT)


def _as_float(a: np.ndarray, source, field: str) -> np.ndarray:
    _numeric(a, source, field)
    if a.dtype.kind == "f":
        _check_finite(a, source, field)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(a, dtype=np.float32, order="C", copy=True)
    _check_finite(out, source, field, note=" after conversion to float32 (values too large)")
    return out


def _as_int(a: np.ndarray, source, field: str) -> np.ndarray:
    _numeric(a, source, field)
    if a.dtype.kind == "f":
        _check_finite(a, source, field)
        if a.size and not np.array_equal(a, np.round(a)):
            raise BodyModelError("expected integer indices, got non-integer values",
                                 file=source, field=field, hint=_REDOWNLOAD_HINT)
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and int(a.max()) > 2 ** 63 - 1:
        # uint64(-1) used as "no parent": keep its meaning as -1.
        a = a.astype(np.int64)
    with np.errstate(invalid="ignore"):  # absurd floats become absurd ints, caught by callers
        return np.array(a, dtype=np.int64, order="C", copy=True)


def _to_ndarray(value: Any, source, field: str, depth: int = 0) -> np.ndarray:
    """Any supported container of an array -> ndarray (chumpy stand-in, sparse, array-like)."""
    if depth > _MAX_NESTING:
        raise BodyModelError("nested too deeply to be an array", file=source, field=field)
    if isinstance(value, np.ndarray):
        if value.size > _MAX_ARRAY_ELEMENTS:
            raise BodyModelError(f"shape {_fmt(value.shape)} is far larger than any body model's",
                                 file=source, field=field, hint=_REDOWNLOAD_HINT)
        return value
    if isinstance(value, _ChumpyStandIn):
        value = _ChumpyStandIn._chumpy_value(value, source, field)
        return _to_ndarray(value, source, field, depth + 1)
    if scipy.sparse.issparse(value):
        return _densify(value, source, field)
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - report any conversion failure on the field
        raise BodyModelError(f"cannot be read as an array ({type(value).__name__}: {exc})",
                             file=source, field=field, hint=_REDOWNLOAD_HINT) from exc
    if arr.dtype == object:
        raise BodyModelError(f"expected a numeric array, got {type(value).__name__}",
                             file=source, field=field, hint=_REDOWNLOAD_HINT)
    return arr


def _densify(matrix: Any, source, field: str) -> np.ndarray:
    """Dense float64 copy of a sparse matrix, built in numpy from its raw parts.

    scipy's own ``toarray`` trusts ``indices``/``indptr`` and writes out of bounds (crashing
    the process) on a corrupt file, so every index is checked here before it is used."""
    compressed = {"csc": (scipy.sparse.csc_matrix, scipy.sparse.csc_array),
                  "csr": (scipy.sparse.csr_matrix, scipy.sparse.csr_array)}
    coo = (scipy.sparse.coo_matrix, scipy.sparse.coo_array)
    kind = next((k for k, classes in compressed.items() if isinstance(matrix, classes)),
                "coo" if isinstance(matrix, coo) else None)
    if kind is None:                       # other formats come only from Python callers
        return _densify(matrix.tocoo(), source, field)

    def fail(what: str) -> BodyModelError:
        return BodyModelError(f"corrupt sparse matrix: {what}", file=source, field=field,
                              hint=_REDOWNLOAD_HINT)

    parts = vars(matrix)
    shape = parts.get("_shape", parts.get("shape"))
    try:
        nrows, ncols = (operator.index(n) for n in shape)
    except Exception:  # noqa: BLE001
        raise fail(f"bad shape {shape!r}") from None
    if nrows < 0 or ncols < 0 or nrows * ncols > _MAX_DENSE_ELEMENTS:
        raise fail(f"unusable shape ({nrows}, {ncols})")

    def part(name: str) -> np.ndarray:
        a = np.asarray(parts.get(name))
        if a.ndim != 1 or a.dtype.kind not in ("iu" if name != "data" else "biuf"):
            raise fail(f"'{name}' is not a 1-D {'numeric' if name == 'data' else 'integer'} "
                       f"array")
        return a

    data = part("data")
    if kind == "coo":
        coords = parts.get("coords")
        if coords is None:
            coords = (parts.get("row"), parts.get("col"))
        try:
            rows, cols = (np.asarray(c) for c in coords)
        except Exception:  # noqa: BLE001
            raise fail("bad coordinates") from None
        for a in (rows, cols):
            if a.ndim != 1 or a.dtype.kind not in "iu" or len(a) != len(data):
                raise fail("coordinates do not match 'data'")
    else:
        indices, indptr = part("indices"), part("indptr")
        major = ncols if kind == "csc" else nrows
        if len(indptr) != major + 1 or (len(indptr) and indptr[0] != 0):
            raise fail(f"'indptr' has {len(indptr)} entries for {major} {kind[1:]} slices")
        steps = np.diff(indptr.astype(np.int64))
        nnz = int(indptr[-1])
        if (steps < 0).any() or nnz > min(len(indices), len(data)):
            raise fail("'indptr' is not a valid run of offsets into 'indices'")
        lines = np.repeat(np.arange(major), steps)
        other = indices[:nnz].astype(np.int64)
        data = data[:nnz]
        rows, cols = (other, lines) if kind == "csc" else (lines, other)
    rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= nrows or cols.min() < 0
                      or cols.max() >= ncols):
        raise fail(f"an index lies outside its ({nrows}, {ncols}) shape")
    dense = np.zeros((nrows, ncols), dtype=np.float64)
    np.add.at(dense, (rows, cols), data.astype(np.float64))  # duplicates add up, as in scipy
    return dense


# ----------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------

def _listing(folder: Path) -> dict[str, str]:
    try:
        return {name.lower(): name for name in os.listdir(folder)}
    except OSError:
        return {}


def _read_raw(file: Path) -> dict[str, Any]:
    from ..link.arrays import ArrayFileError, check_regular_file
    try:   # a pipe would block the reader, a huge file exhaust memory: refused before reading
        check_regular_file(file, _MAX_FILE_BYTES)
    except ArrayFileError as exc:
        raise BodyModelError(exc.message, file=file, hint=_LAYOUT_HINT) from None
    suffix = file.suffix.lower()
    if suffix == ".npz":
        return _read_npz(file)
    if suffix in (".pkl", ".pickle"):
        return _read_pickle(file)
    try:
        with open(file, "rb") as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise BodyModelError(f"cannot be read ({exc.strerror or exc})", file=file) from exc
    if magic == b"PK":
        return _read_npz(file)
    if magic[:1] in (b"\x80", b"(", b"}"):
        return _read_pickle(file)
    raise BodyModelError("unknown format: expected an SMPL .pkl or .npz file", file=file,
                         hint=_LAYOUT_HINT)


def _read_npz(file: Path) -> dict[str, Any]:
    from ..link.arrays import ArrayFileError, npz_headers
    try:   # every member's shape from its header first: nothing large is inflated blindly
        for key, (shape, _dtype) in npz_headers(file).items():
            if math.prod(shape) > _MAX_ARRAY_ELEMENTS:
                raise BodyModelError(f"shape {_fmt(shape)} is far larger than any body model's",
                                     file=file, field=key, hint=_REDOWNLOAD_HINT)
    except ArrayFileError as exc:
        raise BodyModelError(exc.message, file=file, hint=_REDOWNLOAD_HINT) from None
    try:
        archive = np.load(file, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - BadZipFile, OSError, ValueError, EOFError ...
        raise BodyModelError(f"unreadable or corrupt .npz ({type(exc).__name__}: {exc})",
                             file=file, hint=_REDOWNLOAD_HINT) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise BodyModelError("is a single .npy array, not an .npz archive of SMPL arrays",
                             file=file, hint=_REDOWNLOAD_HINT)
    out: dict[str, Any] = {}
    with archive:
        # A compressed member can expand to far more than the file's size: bound it up front.
        unpacked = sum(info.file_size for info in archive.zip.infolist())
        if unpacked > _MAX_NPZ_BYTES:
            raise BodyModelError(
                f"unpacks to {unpacked / 2 ** 30:.1f} GiB, far more than any body model",
                file=file, hint=_REDOWNLOAD_HINT)
        for key in archive.files:
            try:
                out[key] = archive[key]
            except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, ValueError ...
                if "allow_pickle" not in str(exc):
                    raise BodyModelError(
                        f"unreadable or corrupt .npz member ({type(exc).__name__}: {exc})",
                        file=file, field=key, hint=_REDOWNLOAD_HINT) from exc
                # Object arrays need pickle, which is never enabled for user files. Extra keys
                # stored that way are left out; required ones are an error.
                if key in SMPL_KEYS:
                    raise BodyModelError(
                        "is stored as pickled Python objects, which are not loaded for safety",
                        file=file, field=key, hint="save it as a plain numeric array") from exc
    return out


def _read_pickle(file: Path) -> dict[str, Any]:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise BodyModelError(f"cannot be read ({exc.strerror or exc})", file=file) from exc
    _scan_pickle(data, file)
    try:
        obj = _SafeUnpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as exc:
        raise BodyModelError(
            f"pickle refers to {exc.qualname}, which a body model file never needs; refusing "
            "to load it (unpickling it could run code)", file=file,
            hint="only load SMPL files from a source you trust, e.g. https://smpl.is.tue.mpg.de"
        ) from None
    except BodyModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated, garbage, wrong protocol ...
        raise BodyModelError(f"unreadable or corrupt pickle ({type(exc).__name__}: {exc})",
                             file=file, hint=_REDOWNLOAD_HINT) from exc
    if not isinstance(obj, dict):
        raise BodyModelError(f"pickle holds a {type(obj).__name__}, not a dict of SMPL arrays",
                             file=file, hint=_REDOWNLOAD_HINT)
    # The official files carry extras (J, bs_style, bs_type, weights_prior, vert_sym_idxs,
    # J_regressor_prior, pose_training_info): dropped. chumpy stand-ins and sparse matrices
    # become plain arrays here, while a crafted file's oddities can still be blamed on it.
    out: dict[str, Any] = {}
    for key in SMPL_KEYS:
        if key not in obj:
            continue
        try:
            out[key] = _to_ndarray(obj[key], file, key)
        except BodyModelError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BodyModelError(f"cannot be read as an array ({type(exc).__name__}: {exc})",
                                 file=file, field=key, hint=_REDOWNLOAD_HINT) from exc
    return out


# ----------------------------------------------------------------------------------------------
# Restricted unpickling
# ----------------------------------------------------------------------------------------------

# Opcodes an SMPL pickle never needs: external references (persistent ids, the extension
# registry), old-style class instantiation, and out-of-band / bytearray buffers (whose error
# paths in CPython's unpickler are fragile on corrupt input).
_FORBIDDEN_OPCODES = frozenset({"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "INST", "OBJ",
                                "BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"})
_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _scan_pickle(data: bytes, file: Path) -> None:
    """Walk the opcodes (pure Python, nothing is built) before the real unpickler sees them:
    every length-prefixed chunk must fit in the file, memo indices must be plausible (a huge
    one makes the C unpickler allocate a huge memo), and a few opcodes are refused."""
    if not data:
        raise BodyModelError("is empty", file=file, hint=_REDOWNLOAD_HINT)
    count = 0
    try:
        for opcode, arg, pos in pickletools.genops(data):
            count += 1
            if opcode.name in _FORBIDDEN_OPCODES:
                raise BodyModelError(
                    f"pickle uses the {opcode.name} opcode (at byte {pos}), which a body model "
                    "file never needs; refusing to load it", file=file, hint=_REDOWNLOAD_HINT)
            if opcode.name in _MEMO_OPCODES and not (isinstance(arg, int) and 0 <= arg <= count):
                raise ValueError(f"memo index {arg!r} at byte {pos} is out of range")
    except BodyModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - ValueError for truncated / unknown opcodes
        raise BodyModelError(f"unreadable or corrupt pickle ({exc})", file=file,
                             hint=_REDOWNLOAD_HINT) from exc


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        self.qualname = f"{module}.{name}"
        super().__init__(f"global {self.qualname} is not allowed")


class _ChumpyStandIn:
    """Inert stand-in for any chumpy class: records constructor args and pickled state."""

    _chumpy_module = "chumpy"
    _chumpy_name = "Ch"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_ChumpyStandIn":
        obj = object.__new__(cls)
        obj._args = args
        obj._state = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:   # (dict state, slot state)
            merged: dict = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            state = merged
        self._state = state if isinstance(state, dict) else {}

    def _chumpy_value(self, source, field: str) -> Any:
        qualname = f"{self._chumpy_module}.{self._chumpy_name}"
        state, args = self.__dict__.get("_state", {}), self.__dict__.get("_args", ())
        if self._chumpy_name == "Ch":
            if isinstance(state, dict) and "x" in state:
                return state["x"]
            if len(args) == 1:
                return args[0]
            raise BodyModelError(f"chumpy {qualname} without its array ('x' missing)",
                                 file=source, field=field, hint=_REDOWNLOAD_HINT)
        raise BodyModelError(
            f"is a chumpy expression ({qualname}) that cannot be evaluated without chumpy; "
            "only plain chumpy Ch arrays are supported", file=source, field=field,
            hint="re-save the model with plain numpy arrays (np.asarray(value.r) with chumpy)")


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor for protocol-0/1 pickles, limited to object-derived classes."""
    if base is not object or state is not None or not isinstance(cls, type):
        raise pickle.UnpicklingError("copy_reg._reconstructor is only allowed for plain objects")
    return object.__new__(cls)


def _empty_bytes(*args: Any) -> bytes:
    """builtins.bytes as Python 3 writes b"" in protocol-2 pickles: only without arguments
    (bytes(n) would let a tiny file allocate n bytes)."""
    if args:
        raise pickle.UnpicklingError("bytes(...) with arguments is not allowed")
    return b""


def _bounded_reconstruct(subtype: Any, shape: Any, typecode: Any) -> Any:
    """numpy's _reconstruct, which allocates `shape` up front: numpy pickles pass (0,) and
    set the real shape and data afterwards, so refuse large shapes here."""
    try:
        size = int(np.prod(np.asarray(shape, dtype=np.int64)))
    except Exception:  # noqa: BLE001
        raise pickle.UnpicklingError(f"bad array shape {shape!r}") from None
    if not 0 <= size <= 1:
        raise pickle.UnpicklingError(f"array rebuilt with initial shape {shape!r}")
    return _NUMPY_RECONSTRUCT(subtype, shape, typecode)


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """_codecs.encode as Python 3 writes it for bytes in protocol-2 pickles (latin1 only)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1", errors)


class _BoundedNdarray(np.ndarray):
    """numpy.ndarray as a pickle may call it: ``ndarray(shape)`` allocates the whole shape
    (uninitialised) from a few bytes of pickle, so shapes over the model limit are refused.
    numpy's own pickles only pass it to _reconstruct, which never calls ``__new__``."""

    def __new__(cls, shape, *args: Any, **kwargs: Any) -> np.ndarray:
        try:
            size = int(np.prod(np.asarray(shape, dtype=np.int64)))
        except Exception:  # noqa: BLE001
            raise pickle.UnpicklingError(f"bad array shape {str(shape)[:80]}") from None
        if not 0 <= size <= _MAX_ARRAY_ELEMENTS:
            raise pickle.UnpicklingError(f"an array of shape {str(shape)[:80]} is far larger than any body model's")
        return np.ndarray(shape, *args, **kwargs)


_NUMPY_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
_NUMPY_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]

# Only the formats `_densify` reads from raw parts (SMPL's J_regressor is csc).
_SPARSE_CLASSES = frozenset(
    f"{fmt}_{kind}" for fmt in ("coo", "csc", "csr") for kind in ("matrix", "array"))

_ALLOWED: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _bounded_reconstruct
    _ALLOWED[(_mod, "scalar")] = _NUMPY_SCALAR
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _NUMPY_FROMBUFFER
_ALLOWED[("numpy", "ndarray")] = _BoundedNdarray
_ALLOWED[("numpy", "dtype")] = np.dtype
for _mod in ("builtins", "__builtin__"):
    for _name, _obj in (("set", set), ("frozenset", frozenset), ("object", object),
                        ("complex", complex), ("slice", slice), ("bytes", _empty_bytes)):
        _ALLOWED[(_mod, _name)] = _obj
for _mod in ("copyreg", "copy_reg"):
    _ALLOWED[(_mod, "_reconstructor")] = _safe_reconstructor
_ALLOWED[("_codecs", "encode")] = _latin1_encode
_ALLOWED[("collections", "OrderedDict")] = OrderedDict
del _mod, _name, _obj


def _wrap_callable(fn: Any) -> Any:
    """A fresh function per load that calls `fn`: a pickle can BUILD (set attributes) on the
    globals it resolves, and that must never reach the shared numpy/module functions."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return call


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals an SMPL file needs and never imports chumpy.

    Mutable globals (Python classes and functions) are handed out as fresh per-load subclasses
    or wrappers, so whatever a pickle does to them cannot outlive the load; the remaining ones
    (ndarray, dtype, set, builtin functions ...) are immutable."""

    def __init__(self, fh) -> None:
        super().__init__(fh, encoding="latin1")
        self._resolved: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in self._resolved:
            self._resolved[key] = self._resolve(module, name)
        return self._resolved[key]

    @staticmethod
    def _resolve(module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return type(f"chumpy_{name}", (_ChumpyStandIn,),
                        {"_chumpy_module": module, "_chumpy_name": name})
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) \
                and name in _SPARSE_CLASSES:
            return type(name, (getattr(scipy.sparse, name),), {})
        try:
            obj = _ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(module, name) from None
        return _wrap_callable(obj) if isinstance(obj, types.FunctionType) else obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")
