"""Reading a user's SMPL model without chumpy: official-style pickles, .npz, smplx folders,
and clear errors (naming file and field) for every kind of bad input."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import pickletools
import struct
import sys
import types
import weakref
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import smplx
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointwear.body import smpl_file
from pointwear.body.joints import JOINT_NAMES, PARENTS
from pointwear.body.smpl_file import (SMPL_KEYS, read_smpl_file, smpl_file_candidates,
                                      validate_smpl_arrays)
from pointwear.errors import BodyModelError

NV = 60          # vertices of the synthetic model (no code may assume 6890)
NF = 90
ROOT = 4294967295


# ----------------------------------------------------------------------------------------------
# A small synthetic SMPL-like model
# ----------------------------------------------------------------------------------------------

def make_model(seed: int = 0, nv: int = NV, num_betas: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    v_template = rng.normal(size=(nv, 3)) * 0.3
    shapedirs = rng.normal(size=(nv, 3, num_betas)) * 0.01
    posedirs = rng.normal(size=(nv, 3, 207)) * 0.001
    j_regressor = np.zeros((24, nv))
    for j in range(24):
        idx = rng.choice(nv, size=4, replace=False)
        j_regressor[j, idx] = rng.dirichlet(np.ones(4))
    weights = np.zeros((nv, 24))
    for v in range(nv):
        idx = rng.choice(24, size=3, replace=False)
        weights[v, idx] = rng.dirichlet(np.ones(3))
    parents = PARENTS.copy()
    parents[0] = ROOT
    kintree_table = np.stack([parents, np.arange(24)]).astype(np.int64)
    f = rng.integers(0, nv, size=(NF, 3)).astype(np.uint32)
    return dict(v_template=v_template, shapedirs=shapedirs, posedirs=posedirs,
                J_regressor=j_regressor, weights=weights, kintree_table=kintree_table, f=f)


# ----------------------------------------------------------------------------------------------
# Fake chumpy: classes that pickle exactly as chumpy's do (mattloper/chumpy, chumpy/ch.py).
# Ch has no __reduce__, so the default object protocol applies (protocol 2: NEWOBJ(cls, ())
# then BUILD(state)); Ch.__getstate__ returns a copy of __dict__ without the unpicklable
# '_parents' and '_cache'. Ch(x) stores np.asarray(x, float64) as attribute 'x'.
# ----------------------------------------------------------------------------------------------

class Ch:
    __module__ = "chumpy.ch"
    dterms = ("x",)

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        d = obj.__dict__
        d["_dirty_vars"] = set()
        d["_itr"] = None
        d["_parents"] = weakref.WeakKeyDictionary()
        d["_cache"] = {"r": None, "drs": weakref.WeakKeyDictionary()}
        d["_make_dense"] = False
        d["_make_sparse"] = False
        d["_depends_on_deps"] = {}
        if cls is Ch and args:
            kwargs["x"] = np.asarray(args[0], np.float64)
        for name, value in kwargs.items():
            d[name] = value
            d["_dirty_vars"].add(name)
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __getstate__(self):
        result = dict(self.__dict__)
        del result["_parents"]
        del result["_cache"]
        return result

    def __setstate__(self, d):
        d["_parents"] = weakref.WeakKeyDictionary()
        d["_cache"] = {"r": None, "drs": weakref.WeakKeyDictionary()}
        object.__setattr__(self, "__dict__", d)


class add(Ch):  # noqa: N801 - chumpy.ch_ops.add, an expression node (a + b)
    __module__ = "chumpy.ch_ops"
    dterms = ("a", "b")


@contextlib.contextmanager
def fake_chumpy():
    assert "chumpy" not in sys.modules
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")
    ch_ops = types.ModuleType("chumpy.ch_ops")
    ch.Ch, ch_ops.add, chumpy.Ch = Ch, add, Ch
    chumpy.ch, chumpy.ch_ops = ch, ch_ops
    sys.modules.update({"chumpy": chumpy, "chumpy.ch": ch, "chumpy.ch_ops": ch_ops})
    try:
        yield
    finally:
        for name in ("chumpy", "chumpy.ch", "chumpy.ch_ops"):
            sys.modules.pop(name, None)


class Py2Pickler(pickle._Pickler):
    """Protocol 2 the way Python 2's cPickle wrote the official SMPL files: byte strings (and
    ASCII text, Python 2's `str`) as SHORT_BINSTRING/BINSTRING, Python 2 module names."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if isinstance(obj, str):
            if not obj.isascii():
                return pickle._Pickler.save_str(self, obj)
            data = obj.encode("ascii")
        else:
            data = bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def official_dict(model: dict[str, np.ndarray]) -> dict:
    """What the official basicModel_*.pkl holds: Ch arrays, a csc J_regressor and extras."""
    return {
        "v_template": Ch(model["v_template"]),
        "shapedirs": Ch(model["shapedirs"]),
        "posedirs": model["posedirs"],
        "J_regressor": scipy.sparse.csc_matrix(model["J_regressor"]),
        "weights": Ch(model["weights"]),
        "kintree_table": model["kintree_table"],
        "f": model["f"],
        "J": Ch(model["J_regressor"] @ model["v_template"]),
        "J_regressor_prior": scipy.sparse.csc_matrix(model["J_regressor"]),
        "weights_prior": model["weights"].copy(),
        "vert_sym_idxs": np.arange(len(model["v_template"]))[::-1].copy(),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "pose_training_info": {"nSubjects_male": 20, "nTotalScans": 1786},
    }


def chumpy_pickle_bytes(model, protocol="py2", override=None) -> bytes:
    with fake_chumpy():
        d = official_dict(model)
        if override is not None:
            override(d)  # edits the dict in place
        buf = io.BytesIO()
        if protocol == "py2":
            Py2Pickler(buf, protocol=2).dump(d)
        else:
            pickle.dump(d, buf, protocol=protocol)
    return buf.getvalue()


def write_chumpy_pickle(path: Path, model, protocol="py2", override=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(chumpy_pickle_bytes(model, protocol, override))
    return path


def write_npz(path: Path, model, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **model, **extra)
    return path


def assert_matches(out: dict, model: dict) -> None:
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        assert out[key].dtype == np.float32, key
        assert out[key].flags.c_contiguous, key
        np.testing.assert_array_equal(out[key], model[key].astype(np.float32), err_msg=key)
    for key in ("kintree_table", "f"):
        assert out[key].dtype == np.int64, key
        np.testing.assert_array_equal(out[key], model[key].astype(np.int64), err_msg=key)


def run_smplx(arrays: dict) -> None:
    """smplx's own SMPL runs on the arrays; zero pose reproduces the template exactly."""
    ids = {name: 0 for name in smplx.vertex_ids.vertex_ids["smplh"]}  # tiny mesh: no 6890 ids
    body = smplx.SMPL(model_path="", data_struct=smplx.utils.Struct(**arrays), vertex_ids=ids)
    with torch.no_grad():
        rest = body()
        np.testing.assert_allclose(rest.vertices[0].numpy(), arrays["v_template"], atol=1e-6)
        np.testing.assert_allclose(rest.joints[0, :24].numpy(),
                                   arrays["J_regressor"] @ arrays["v_template"], atol=1e-5)
        betas = torch.linspace(-1, 1, body.num_betas)[None]
        shaped = body(betas=betas)
        expect = arrays["v_template"] + arrays["shapedirs"][:, :, :body.num_betas] @ betas[0].numpy()
        np.testing.assert_allclose(shaped.vertices[0].numpy(), expect, atol=1e-5)
        posed = body(betas=betas, body_pose=torch.full((1, 69), 0.2))
        assert torch.isfinite(posed.vertices).all()
        assert not torch.allclose(posed.vertices, shaped.vertices)


def err(excinfo) -> BodyModelError:
    assert isinstance(excinfo.value, BodyModelError)
    return excinfo.value


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["py2", 2, 0])
def test_chumpy_pickle_reads_without_chumpy(tmp_path, protocol):
    model = make_model(1)
    path = write_chumpy_pickle(tmp_path / "basicModel_f_lbs_10_207_0_v1.0.0.pkl", model, protocol)
    raw = path.read_bytes()
    assert b"chumpy.ch\nCh\n" in raw and b"csc_matrix" in raw  # really a chumpy-style pickle
    with pytest.raises(ImportError):
        importlib.import_module("chumpy")

    out = read_smpl_file(path)

    assert "chumpy" not in sys.modules
    assert set(out) == set(SMPL_KEYS)          # bs_style, J, weights_prior ... dropped
    assert_matches(out, model)
    assert out["kintree_table"][0, 0] == ROOT
    run_smplx(out)


def test_fake_official_pickle_looks_like_python2_and_needs_chumpy_elsewhere():
    raw = chumpy_pickle_bytes(make_model(0))
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    assert {"SHORT_BINSTRING", "BINSTRING", "NEWOBJ", "BUILD"} <= ops
    assert not ops & {"BINUNICODE", "SHORT_BINUNICODE"}  # all text is Python 2 `str`
    assert b"__builtin__\nset\n" in raw and b"_codecs" not in raw
    with pytest.raises(ModuleNotFoundError, match="chumpy"):  # what a plain pickle.load does
        pickle.loads(raw, encoding="latin1")


def test_npz_reads_and_passes_extras(tmp_path):
    model = make_model(2, num_betas=16)
    extras = dict(joint_names=np.array(JOINT_NAMES), vertex_ids_names=np.array(["nose", "reye"]),
                  vertex_ids_values=np.array([3, 7]), vt=np.random.default_rng(0).random((70, 2)),
                  ft=np.zeros((NF, 3), np.int32), license=np.array("CC0-1.0"))
    path = write_npz(tmp_path / "body.npz", model, **extras)

    out = read_smpl_file(path)

    assert_matches(out, model)
    assert out["shapedirs"].shape == (NV, 3, 16)
    assert set(out) == set(SMPL_KEYS) | set(extras)
    for key, value in extras.items():
        assert out[key].dtype == value.dtype
        np.testing.assert_array_equal(out[key], value)
    run_smplx(out)


def test_npz_without_suffix_is_sniffed(tmp_path):
    model = make_model(3)
    write_npz(tmp_path / "m.npz", model)
    (tmp_path / "m.npz").rename(tmp_path / "model.bin")
    assert_matches(read_smpl_file(tmp_path / "model.bin"), model)


LAYOUTS = {
    "smplx": {"neutral": "smpl/SMPL_NEUTRAL.pkl", "male": "smpl/SMPL_MALE.npz",
              "female": "smpl/SMPL_FEMALE.pkl"},
    "flat": {"neutral": "SMPL_NEUTRAL.npz", "male": "SMPL_MALE.pkl", "female": "SMPL_FEMALE.pkl"},
    "official_v1.1": {"neutral": "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl",
                      "male": "basicmodel_m_lbs_10_207_0_v1.1.0.pkl",
                      "female": "basicmodel_f_lbs_10_207_0_v1.1.0.pkl"},
    "official_v1.0": {"neutral": "smpl/models/basicModel_neutral_lbs_10_207_0_v1.0.0.pkl",
                      "male": "models/basicModel_m_lbs_10_207_0_v1.0.0.pkl",
                      "female": "models/basicModel_f_lbs_10_207_0_v1.0.0.pkl"},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_folder_picks_the_gender(tmp_path, layout):
    models = {}
    for seed, (gender, rel) in enumerate(LAYOUTS[layout].items()):
        models[gender] = make_model(10 + seed)
        target = tmp_path / rel
        if rel.endswith(".npz"):
            write_npz(target, models[gender])
        else:
            write_chumpy_pickle(target, models[gender])
    for gender, model in models.items():
        out = read_smpl_file(tmp_path, gender=gender)
        assert_matches(out, model)
    assert_matches(read_smpl_file(str(tmp_path), gender="MALE"), models["male"])
    assert_matches(read_smpl_file(tmp_path), models["neutral"])  # neutral is the default


def test_folder_prefers_smplx_layout_and_accepts_the_smpl_subfolder(tmp_path):
    smplx_model, official = make_model(20), make_model(21)
    write_chumpy_pickle(tmp_path / "smpl" / "SMPL_FEMALE.pkl", smplx_model)
    write_chumpy_pickle(tmp_path / "basicModel_f_lbs_10_207_0_v1.0.0.pkl", official)
    assert_matches(read_smpl_file(tmp_path, "female"), smplx_model)
    assert_matches(read_smpl_file(tmp_path / "smpl", "female"), smplx_model)


def test_validate_accepts_sparse_and_passes_extras_untouched():
    model = make_model(4)
    arrays = dict(model, J_regressor=scipy.sparse.csr_matrix(model["J_regressor"]),
                  kintree_table=np.where(model["kintree_table"] == ROOT, -1,
                                         model["kintree_table"]).astype(np.int32))
    marker = object()
    out = validate_smpl_arrays(dict(arrays, anything=marker), "x.npz")
    assert out["anything"] is marker
    np.testing.assert_array_equal(out["J_regressor"], model["J_regressor"].astype(np.float32))
    assert out["kintree_table"][0, 0] == -1 and out["kintree_table"].dtype == np.int64
    out["v_template"][0, 0] = 123.0                  # a copy: the caller's arrays are untouched
    assert model["v_template"][0, 0] != 123.0


# ----------------------------------------------------------------------------------------------
# Missing / unreadable input
# ----------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(tmp_path / "nope" / "SMPL_NEUTRAL.pkl")
    assert "SMPL_NEUTRAL.pkl" in str(ei.value) and "no such file" in str(ei.value)


def test_missing_gender_file_lists_what_was_looked_for(tmp_path):
    write_npz(tmp_path / "smpl" / "SMPL_NEUTRAL.npz", make_model(0))
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(tmp_path, gender="male")
    e = err(ei)
    assert e.file == str(tmp_path) and e.field == "gender"
    for rel in smpl_file_candidates("male"):
        assert rel in str(e)
    assert "smpl/SMPL_MALE.pkl" in str(e) and "basicModel_m_lbs_10_207_0_v1.0.0.pkl" in str(e)


def test_unknown_gender(tmp_path):
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(tmp_path, gender="robot")
    assert err(ei).field == "gender" and "robot" in str(ei.value)


def _truncated_pickle(tmp_path):
    raw = chumpy_pickle_bytes(make_model(0))
    return raw[: len(raw) // 2]


BAD_FILES = {
    "truncated.pkl": _truncated_pickle,
    "empty.pkl": lambda tmp: b"",
    "garbage.pkl": lambda tmp: b"\x80\x02" + np.random.default_rng(0).bytes(64),
    "list.pkl": lambda tmp: pickle.dumps([1, 2, 3], protocol=2),
    "garbage.npz": lambda tmp: b"PK\x03\x04 this is not a zip archive",
    "truncated.npz": lambda tmp: (write_npz(tmp / "t.npz", make_model(0)).read_bytes()[:3000]),
    "array.npz": lambda tmp: (np.save(tmp / "a.npy", np.zeros(3)), (tmp / "a.npy").read_bytes())[1],
    "notes.txt": lambda tmp: b"just some text",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_corrupt_files_are_reported(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name](tmp_path))
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(path)
    e = err(ei)
    assert e.file == str(path) and name in str(e)


def test_npz_with_pickled_object_array_is_not_unpickled(tmp_path):
    model = make_model(0)
    path = tmp_path / "obj.npz"
    np.savez(path, **dict(model, f=np.array([list(r) for r in model["f"]], dtype=object)))
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(path)
    assert err(ei).field == "f" and "obj.npz: f: " in str(ei.value)


def test_npz_extra_object_array_is_left_out(tmp_path):
    model = make_model(0)
    path = tmp_path / "m.npz"
    np.savez(path, **model, notes=np.array([{"a": 1}], dtype=object), vt=np.zeros((4, 2)))
    out = read_smpl_file(path)
    assert "notes" not in out and out["vt"].shape == (4, 2)
    assert_matches(out, model)


def test_npz_that_unpacks_too_large_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, **make_model(0), pad=np.zeros(10 ** 6))  # 8 MB of zeros, tiny file
    assert path.stat().st_size < 2 * 10 ** 6
    monkeypatch.setattr(smpl_file, "_MAX_NPZ_BYTES", 4 * 10 ** 6)
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(path)
    assert "bomb.npz" in str(ei.value) and "unpacks" in str(ei.value)


def test_corrupt_compressed_npz_member_names_the_field(tmp_path):
    path = tmp_path / "m.npz"
    np.savez_compressed(path, v_template=np.random.default_rng(0).random((500, 3)))
    raw = bytearray(path.read_bytes())
    start = raw.index(b"v_template.npy") + 200          # inside the deflated data
    raw[start:start + 40] = bytes(40)
    path.write_bytes(bytes(raw))
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(path)
    assert err(ei).field == "v_template" and "m.npz: v_template: " in str(ei.value)


def test_chumpy_expression_is_refused_with_field(tmp_path):
    model = make_model(0)
    half = model["shapedirs"] / 2
    path = write_chumpy_pickle(tmp_path / "SMPL_NEUTRAL.pkl", model,
                               override=lambda d: d.update(shapedirs=add(a=Ch(half), b=Ch(half))))
    assert b"chumpy.ch_ops\nadd\n" in path.read_bytes()
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(path)
    assert err(ei).field == "shapedirs" and "chumpy.ch_ops.add" in str(ei.value)


def test_message_reads_file_field_problem(tmp_path):
    model = make_model(0)
    path = write_chumpy_pickle(tmp_path / "SMPL_NEUTRAL.pkl", model,
                               override=lambda d: d.update(shapedirs=Ch(model["shapedirs"][:, 0, :])))
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(path)
    assert str(ei.value).startswith(
        f"{path}: shapedirs: expected (V, 3, S) with V={NV} from v_template, got ({NV}, 10)")


# ----------------------------------------------------------------------------------------------
# Malicious pickles are refused before anything runs
# ----------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _payloads(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    import subprocess
    return {
        "os.system": f"cos\nsystem\n(S'{cmd}'\ntR.".encode(),
        "posix.system": pickle.dumps({"v_template": np.zeros((3, 3)),
                                      "shapedirs": _Evil(os.system, cmd)}, protocol=2),
        "__builtin__.eval": pickle.dumps(_Evil(eval, code), protocol=2),  # Python 2 name
        "builtins.exec": pickle.dumps(_Evil(exec, code), protocol=4),
        "subprocess.Popen": pickle.dumps(_Evil(subprocess.Popen, ["touch", str(marker)]), 4),
        "numpy.testing._private.utils.runstring":
            b"cnumpy.testing._private.utils\nrunstring\n(S\"" + code.encode() + b"\"\n(dtR.",
        "scipy.sparse.load_npz": b"cscipy.sparse\nload_npz\n(S'x.npz'\ntR.",
    }


@pytest.mark.parametrize("target", sorted(_payloads(Path("/x"))))
def test_malicious_pickle_is_refused_without_running(tmp_path, target):
    marker = tmp_path / "pwned"
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(_payloads(marker)[target])
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(path)
    assert not marker.exists()
    e = err(ei)
    assert target in str(e) and e.file == str(path) and "refusing" in str(e)


def test_os_system_inside_chumpy_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    model = make_model(0)
    evil = Ch(x=_Evil(os.system, f"touch {marker}"))
    path = write_chumpy_pickle(tmp_path / "m.pkl", model, protocol=2,
                               override=lambda d: d.update(weights=evil))
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(path)
    assert not marker.exists() and "system" in str(ei.value)


class _Reduce:
    """Pickles as an arbitrary call, without making it."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


HOSTILE = {
    # opcode the reader refuses outright (CPython's error path for it is fragile)
    "bytearray8": (lambda: pickle.dumps({"f": bytearray(b"abc")}, protocol=5), "BYTEARRAY8"),
    # memo index 2**31-1: would make the C unpickler allocate a 16 GB memo
    "huge memo index": (lambda: b"\x80\x02}r\xff\xff\xff\x7f.", "memo index"),
    # allowed callables, but called to allocate huge amounts of memory from a tiny file
    "bytes(10**11)": (lambda: pickle.dumps(_Reduce(bytes, 10 ** 11), protocol=2), "corrupt"),
    "huge _reconstruct": (lambda: pickle.dumps(_Reduce(np.zeros(1).__reduce__()[0], np.ndarray,
                                                       (10 ** 6, 10 ** 6), b"b"), protocol=2),
                          "corrupt"),
    "persistent id": (lambda: b"\x80\x02K\x01Q.", "BINPERSID"),
    "extension code": (lambda: b"\x80\x02\x82\x01.", "EXT1"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_pickles_are_refused(tmp_path, case):
    make, text = HOSTILE[case]
    path = tmp_path / "SMPL_MALE.pkl"
    path.write_bytes(make())
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(path)
    assert text in str(ei.value) and str(path) in str(ei.value)


def test_corrupt_sparse_indices_are_caught_not_written_out_of_bounds(tmp_path):
    model = make_model(0)

    def corrupt(d):
        m = scipy.sparse.csc_matrix(model["J_regressor"])
        m.indices[3] = 10 ** 6         # row index far outside the (24, V) matrix
        d["J_regressor"] = m

    path = write_chumpy_pickle(tmp_path / "SMPL_NEUTRAL.pkl", model, override=corrupt)
    with pytest.raises(BodyModelError) as ei:
        read_smpl_file(path)
    assert err(ei).field == "J_regressor" and "sparse" in str(ei.value)


# ----------------------------------------------------------------------------------------------
# Bad arrays: each names the file and the field
# ----------------------------------------------------------------------------------------------

def _set(key, value_fn):
    def mutate(m):
        m[key] = value_fn(m)
    return mutate


def _poke(key, index, value):
    def mutate(m):
        a = m[key].astype(np.float64 if m[key].dtype.kind == "f" else m[key].dtype, copy=True)
        a[index] = value
        m[key] = a
    return mutate


def _parent(j, p):
    def mutate(m):
        k = m["kintree_table"].copy()
        k[0, j] = p
        m["kintree_table"] = k
    return mutate


BAD_ARRAYS = {
    "missing posedirs": (lambda m: m.pop("posedirs"), "posedirs", "missing"),
    "missing two": (lambda m: (m.pop("weights"), m.pop("f")), "weights, f", "missing"),
    "v_template 2d": (_set("v_template", lambda m: m["v_template"][:, :2]), "v_template", "(V, 3)"),
    "shapedirs 2d": (_set("shapedirs", lambda m: m["shapedirs"][:, 0]), "shapedirs",
                     f"expected (V, 3, S) with V={NV} from v_template, got ({NV}, 10)"),
    "shapedirs V": (_set("shapedirs", lambda m: m["shapedirs"][1:]), "shapedirs", f"({NV - 1}, 3, 10)"),
    "shapedirs S=0": (_set("shapedirs", lambda m: m["shapedirs"][:, :, :0]), "shapedirs", "S >= 1"),
    "posedirs V": (_set("posedirs", lambda m: m["posedirs"][:-2]), "posedirs", f"V={NV}"),
    "posedirs P": (_set("posedirs", lambda m: m["posedirs"][:, :, :200]), "posedirs", "207"),
    "J_regressor 52 joints": (_set("J_regressor", lambda m: np.tile(m["J_regressor"], (3, 1))[:52]),
                              "J_regressor", "52 joints"),
    "J_regressor V": (_set("J_regressor", lambda m: m["J_regressor"][:, :-1]), "J_regressor",
                      f"(24, {NV - 1})"),
    "weights 23 joints": (_set("weights", lambda m: m["weights"][:, :23]), "weights", "23 joints"),
    "weights V": (_set("weights", lambda m: m["weights"][:-1]), "weights", f"V={NV}"),
    "kintree 52 joints": (_set("kintree_table", lambda m: np.stack([np.r_[ROOT, np.arange(51)],
                                                                     np.arange(52)])),
                          "kintree_table", "52 joints"),
    "NaN v_template": (_poke("v_template", (5, 1), np.nan), "v_template", "NaN/inf"),
    "inf posedirs": (_poke("posedirs", (7, 2, 100), np.inf), "posedirs", "NaN/inf"),
    "NaN J_regressor": (_poke("J_regressor", (3, 4), np.nan), "J_regressor", "NaN/inf"),
    "NaN shapedirs": (_poke("shapedirs", (0, 0, 0), -np.inf), "shapedirs", "NaN/inf"),
    "NaN weights": (_poke("weights", (9, 0), np.nan), "weights", "NaN/inf"),
    "float32 overflow": (_poke("v_template", (0, 0), 1e300), "v_template", "float32"),
    "face index = V": (_poke("f", (4, 2), NV), "f", f"[0, {NV - 1}]"),
    "negative face index": (_set("f", lambda m: np.r_[[[-1, 0, 1]], m["f"].astype(np.int64)]),
                            "f", "out of range"),
    "non-integer faces": (_set("f", lambda m: m["f"] + 0.5), "f", "integer"),
    "f not triangles": (_set("f", lambda m: m["f"][:, :2]), "f", "(F, 3)"),
    "weights sum": (_set("weights", lambda m: m["weights"] * 0.99), "weights", "sum to 1"),
    "weights negative": (_set("weights", lambda m: np.c_[m["weights"][:, :1] + 0.5,
                                                         m["weights"][:, 1:2] - 0.5,
                                                         m["weights"][:, 2:]]),
                         "weights", "negative"),
    "root has a parent": (_parent(0, 3), "kintree_table", "root"),
    "parent after child": (_parent(5, 7), "kintree_table", "joint 5 (right_knee) has parent 7"),
    "self parent": (_parent(9, 9), "kintree_table", "tree"),
    "second root": (_parent(12, -1), "kintree_table", "tree"),
    "joint ids shuffled": (_set("kintree_table", lambda m: m["kintree_table"][:, ::-1]),
                           "kintree_table", "row 1"),
    "text array": (_set("v_template", lambda m: m["v_template"].astype(str)), "v_template", "numeric"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays_name_file_and_field(case):
    mutate, field, text = BAD_ARRAYS[case]
    model = make_model(5)
    mutate(model)
    with pytest.raises(BodyModelError) as ei:
        validate_smpl_arrays(model, "SMPL_MALE.npz")
    e = err(ei)
    assert e.file == "SMPL_MALE.npz" and e.field == field
    assert str(e).startswith(f"SMPL_MALE.npz: {field}: ")
    assert text in str(e)


@pytest.mark.parametrize("case", ["missing two", "J_regressor 52 joints", "NaN weights",
                                  "face index = V", "parent after child", "shapedirs V"])
def test_bad_arrays_from_files(tmp_path, case):
    mutate, field, text = BAD_ARRAYS[case]
    model = make_model(6)
    mutate(model)

    def override(d):
        for key in SMPL_KEYS:
            if key in model:
                d[key] = Ch(model[key]) if key == "shapedirs" else model[key]
            else:
                del d[key]

    for path in (write_npz(tmp_path / "bad.npz", model),
                 write_chumpy_pickle(tmp_path / "bad.pkl", make_model(6), override=override)):
        with pytest.raises(BodyModelError) as ei:
            read_smpl_file(path)
        assert err(ei).field == field and text in str(ei.value)
        assert str(ei.value).startswith(f"{path}: {field}: ")


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------

BASE = make_model(7)
# Axes whose size the SMPL layout fixes (V from v_template, 3, 24 joints, 207, 2 rows).
CONSTRAINED_AXES = {"v_template": (1,), "shapedirs": (0, 1), "posedirs": (0, 1, 2),
                    "J_regressor": (0, 1), "weights": (0, 1), "kintree_table": (0, 1), "f": (1,)}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_shape_corruptions_are_rejected_naming_the_field(data):
    key = data.draw(st.sampled_from(sorted(CONSTRAINED_AXES)), label="key")
    arr = BASE[key]
    kind = data.draw(st.sampled_from(["resize", "add_axis", "drop_axis"]), label="kind")
    if kind == "resize":
        axis = data.draw(st.sampled_from(CONSTRAINED_AXES[key]), label="axis")
        old = arr.shape[axis]
        new = data.draw(st.integers(0, 260).filter(lambda n: n != old), label="size")
        bad = np.take(arr, np.arange(new) % old, axis=axis)  # values stay plausible
    elif kind == "add_axis":
        axis = data.draw(st.integers(0, arr.ndim), label="axis")
        reps = data.draw(st.integers(1, 3), label="reps")
        bad = np.repeat(np.expand_dims(arr, axis), reps, axis=axis)
    else:
        bad = arr[..., 0]
    arrays = dict(BASE, **{key: bad})
    with pytest.raises(BodyModelError) as ei:
        validate_smpl_arrays(arrays, "SMPL_NEUTRAL.pkl")
    assert ei.value.field == key
    assert str(ei.value).startswith(f"SMPL_NEUTRAL.pkl: {key}: ")


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["v_template", "shapedirs", "posedirs", "J_regressor", "weights"]),
       where=st.floats(0, 1, exclude_max=True), value=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_property_non_finite_values_are_rejected_naming_the_field(key, where, value):
    bad = BASE[key].copy()
    bad.flat[int(where * bad.size)] = value
    with pytest.raises(BodyModelError) as ei:
        validate_smpl_arrays(dict(BASE, **{key: bad}), "m.npz")
    assert ei.value.field == key and "NaN/inf" in str(ei.value)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 16), betas=st.integers(1, 20))
def test_property_valid_models_round_trip(seed, betas):
    model = make_model(seed, nv=30, num_betas=betas)
    out = validate_smpl_arrays(model, "m.npz")
    assert_matches(out, model)


POLLUTERS = {
    # BUILD applied to the resolved global itself, trying to change it for the whole process.
    "sparse class (slot state)": (b"\x80\x02cscipy.sparse\ncsc_matrix\nN}S'pointwear_polluted'\nI1\ns\x86b.",
                                  lambda: scipy.sparse.csc_matrix),
    "numpy function (dict state)": (b"\x80\x02cnumpy.core.numeric\n_frombuffer\n}S'pointwear_polluted'\nI1\nsb.",
                                    lambda: np.zeros(1).__reduce_ex__(5)[0]),
    "copyreg (dict state)": (b"\x80\x02ccopy_reg\n_reconstructor\n}S'pointwear_polluted'\nI1\nsb.",
                             lambda: smpl_file._safe_reconstructor),
}


@pytest.mark.parametrize("case", sorted(POLLUTERS))
def test_pickle_cannot_modify_allowed_globals(tmp_path, case):
    raw, target = POLLUTERS[case]
    path = tmp_path / "m.pkl"
    path.write_bytes(raw)
    with pytest.raises(BodyModelError):   # the result is not a dict of arrays, whatever happened
        read_smpl_file(path)
    assert not hasattr(target(), "pointwear_polluted")
    # and the reader still works afterwards
    model = make_model(0)
    assert_matches(read_smpl_file(write_chumpy_pickle(tmp_path / "ok.pkl", model)), model)


SMALL_PICKLE = chumpy_pickle_bytes(make_model(8, nv=8))


@settings(max_examples=120, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, len(SMALL_PICKLE) - 1), st.integers(0, 255),
                                st.sampled_from(["set", "delete", "insert"])),
                      min_size=1, max_size=6))
def test_property_corrupted_pickles_load_or_fail_cleanly(tmp_path_factory, edits):
    raw = bytearray(SMALL_PICKLE)
    for pos, byte, how in edits:
        pos = min(pos, len(raw) - 1)
        if how == "set":
            raw[pos] = byte
        elif how == "delete":
            del raw[pos]
        else:
            raw.insert(pos, byte)
    path = tmp_path_factory.mktemp("fuzz") / "m.pkl"
    path.write_bytes(bytes(raw))
    try:
        out = read_smpl_file(path)
    except BodyModelError as e:
        assert str(path) in str(e)
    else:  # whatever survived is a valid model
        assert set(out) == set(SMPL_KEYS) and out["v_template"].shape == (8, 3)
