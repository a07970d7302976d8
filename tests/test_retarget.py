"""`pointwear motion import`: BVH -> SMPL retargeting with name tables, unit and up-axis detection,
joint-position error and foot skating, on the real CMU file (../shared/data/real/cmu_01_01.bvh)."""
from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.spatial.transform import Rotation as R

from pointwear.data.bvh import read_bvh, write_bvh
from pointwear.data.motion import read_motion
from pointwear.data.retarget import (NAME_TABLE, RetargetOptions, canonical_bvh, describe_units, foot_skating,
                                     load_name_table, retarget_bvh)
from pointwear.errors import InputError

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "cmu_01_01.bvh"
if not CMU.is_file():
    CMU = Path("/work/shared/data/real/cmu_01_01.bvh")
ROWS = (0, 360)                    # 3 s of the 120 fps file -> 90 frames at 30 fps
FAST = RetargetOptions(iterations=25)


@pytest.fixture(scope="module")
def cmu_report(default_body, tmp_path_factory):
    out = tmp_path_factory.mktemp("retarget") / "cmu.npz"
    return retarget_bvh(CMU, out, default_body, options=FAST, frames=ROWS)


def test_cmu_retarget_reports_error_and_skating_beside_the_source(cmu_report):
    """Measured: root and legs ~1.5 cm off the scaled mocap (only they are matched in position),
    all joints ~5 cm (the actor's torso is shorter); the result skates about as much as the mocap."""
    r = cmu_report
    assert r["frames"] == 90 and r["fps"] == pytest.approx(30, rel=1e-3)
    assert r["units"].startswith("CMU units") and r["up"] == "y"
    assert "CMU units" in r["notes"][0] and not any("Z-up" in n for n in r["notes"])
    assert r["joint_error_cm"]["root_and_legs"] < 3.0
    assert r["joint_error_cm"]["all"] < 8.0
    src, out = r["foot_skating"]["source"], r["foot_skating"]["retargeted"]
    assert 0.2 < src["contact"] < 0.9 and 0.2 < out["contact"] < 0.9
    assert out["speed_cm_s"] < src["speed_cm_s"] + 5.0
    motion = read_motion(r["motion"], up="y")
    assert motion.num_frames == 90 and motion.body_pose.shape == (90, 69)
    saved = json.loads(Path(r["motion"]).with_suffix(".json").read_text())
    assert saved["joint_error_cm"] == r["joint_error_cm"]


def _z_up_centimetres(bvh):
    """The same take as a Z-up skeleton in centimetres: offsets and root positions turned by C
    (Y-up -> Z-up) and scaled; every joint's local rotation conjugated, C L C^T."""
    turn = R.from_euler("x", 90, degrees=True)
    scale = 5.6                                        # CMU unit -> cm
    motion = bvh.motion.astype(np.float64).copy()
    start = bvh.channel_start
    for j, chans in enumerate(bvh.channels):
        rot = [i for i, c in enumerate(chans) if c.endswith("rotation")]
        pos = [i for i, c in enumerate(chans) if c.endswith("position")]
        if rot:
            order = "".join(chans[i][0] for i in rot)
            cols = start[j] + np.array(rot)
            local = R.from_euler(order, motion[:, cols], degrees=True)
            motion[:, cols] = (turn * local * turn.inv()).as_euler(order, degrees=True)
        if pos:
            cols = start[j] + np.array(pos)
            motion[:, cols] = turn.apply(motion[:, cols]) * scale
    return replace(bvh, offsets=turn.apply(bvh.offsets) * scale, motion=motion.astype(np.float32),
                   end_sites=[(j, turn.apply(o) * scale) for j, o in bvh.end_sites])


def _cmu_head(cache={}):
    if not cache:
        bvh = read_bvh(CMU)
        cache["bvh"] = replace(bvh, motion=bvh.motion[:8])
    return cache["bvh"]


def _renamed(bvh, names):
    return replace(bvh, names=[names.get(n, n) for n in bvh.names])


BIP = {"Hips": "Bip01_Pelvis", "LeftUpLeg": "Bip01_L_Thigh", "LeftLeg": "Bip01_L_Calf", "LeftFoot": "Bip01_L_Foot",
       "LeftToeBase": "Bip01_L_Toe0", "RightUpLeg": "mixamorig:RightUpLeg", "RightLeg": "right_knee",
       "RightFoot": "R-Foot", "LeftArm": "upper_arm.L", "LeftForeArm": "forearm.L"}


def test_other_rig_in_centimetres_and_z_up_is_detected_and_retargets_the_same(cmu_report, default_body, tmp_path):
    bvh = read_bvh(CMU)
    bvh = replace(bvh, motion=bvh.motion[:ROWS[1]])
    path = write_bvh(tmp_path / "bip_cm_zup.bvh", _renamed(_z_up_centimetres(bvh), BIP))
    r = retarget_bvh(path, tmp_path / "bip.npz", default_body, options=FAST)
    assert r["units"] == "centimetres" and r["up"] == "z"
    assert any("centimetres" in n for n in r["notes"]) and any("Z-up" in n for n in r["notes"])
    assert not r["unknown_joints"]
    assert r["joint_error_cm"]["root_and_legs"] == pytest.approx(cmu_report["joint_error_cm"]["root_and_legs"], abs=0.3)
    a = read_motion(cmu_report["motion"], up="y")
    b = read_motion(r["motion"], up="y")
    np.testing.assert_allclose(b.transl, a.transl, atol=0.01)
    angle = (R.from_rotvec(b.body_pose.reshape(-1, 3)) * R.from_rotvec(a.body_pose.reshape(-1, 3)).inv()).magnitude()
    assert np.degrees(np.median(angle)) < 1.0


def test_unknown_joint_names_are_named_with_the_table_then_a_user_table_fixes_them(default_body, tmp_path):
    bvh = read_bvh(CMU)
    odd = {"LeftLeg": "Knie_links", "RightLeg": "Knie_rechts"}
    path = write_bvh(tmp_path / "odd.bvh", _renamed(replace(bvh, motion=bvh.motion[:40]), odd))
    out = tmp_path / "odd.npz"
    with pytest.raises(InputError) as info:
        retarget_bvh(path, out, default_body, options=RetargetOptions(iterations=0))
    text = str(info.value)
    assert "Knie_links" in text and "Knie_rechts" in text and str(path) in text
    assert str(NAME_TABLE) in info.value.hint and "--map" in info.value.hint
    assert not out.exists() and not out.with_suffix(".json").exists()
    table = tmp_path / "mine.json"
    table.write_text(json.dumps({"aliases": {"LeftLeg": ["knie links"], "RightLeg": ["KNIE-RECHTS"]}}))
    r = retarget_bvh(path, out, default_body, [table], RetargetOptions(iterations=0))
    assert not r["unknown_joints"] and out.is_file() and str(table) in r["name_tables"]


@pytest.mark.parametrize("content, field", [
    ("{", None), ('{"aliases": []}', "aliases"), ('{"aliases": {"Knee": ["x"]}}', "aliases.Knee"),
    ('{"aliases": {"LeftLeg": "x"}}', "aliases.LeftLeg"), ('{"aliases": {"LeftLeg": [""]}}', "aliases.LeftLeg")])
def test_bad_name_tables_name_file_and_field(tmp_path, content, field):
    table = tmp_path / "t.json"
    table.write_text(content)
    with pytest.raises(InputError) as info:
        load_name_table([table])
    assert str(table) in str(info.value) and info.value.field == field


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["LeftUpLeg", "Bip01 L Thigh", "thigh.L", "LeftForeArm", "Bip01 L Thigh", "LeftThigh"]),
       st.lists(st.sampled_from([" ", "_", "-", "."]), max_size=3), st.booleans(), st.text("abcXYZ", max_size=6))
def test_names_match_ignoring_case_separators_and_namespace(name, seps, upper, namespace):
    table, _ = load_name_table()
    variant = name.upper() if upper else name.lower()
    for sep in seps:
        variant = variant[:1] + sep + variant[1:]
    if namespace:
        variant = namespace + ":" + variant
    bvh = _cmu_head()
    base, _ = canonical_bvh(_renamed(bvh, {"LeftUpLeg": name}), table)
    alt, unknown = canonical_bvh(_renamed(bvh, {"LeftUpLeg": variant}), table)
    assert alt.names == base.names and variant not in unknown


def test_units_and_foot_skating_measures():
    assert describe_units(0.01) == "centimetres" and describe_units(1.0) == "metres"
    assert describe_units(0.0254) == "inches" and describe_units(0.3).startswith("feet")
    assert describe_units(7.0).startswith("unknown units")
    t = np.arange(60)
    joints = np.zeros((60, 24, 3))
    joints[:, :, 1] = np.where((t // 10) % 2 == 0, 0.0, 0.2)[:, None]   # feet down 10 frames, up 10
    joints[:, :, 0] = 0.01 * t[:, None]                                 # sliding 1 cm per frame
    skate = foot_skating(joints, fps=30.0)
    assert skate["speed_cm_s"] == pytest.approx(30.0) and skate["contact"] == pytest.approx(27 / 59)


def test_cli_motion_import_and_its_errors(pointwear_exe, tmp_path):
    bvh = read_bvh(CMU)
    small = write_bvh(tmp_path / "s.bvh", replace(bvh, motion=bvh.motion[:40]))
    out = tmp_path / "m.npz"
    proc = subprocess.run([pointwear_exe, "motion", "import", str(small), "--out", str(out), "--iterations", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "CMU units" in proc.stdout and "foot skating" in proc.stdout and out.is_file()
    bad = write_bvh(tmp_path / "b.bvh", _renamed(replace(bvh, motion=bvh.motion[:8]), {"LeftFoot": "Fuss"}))
    proc = subprocess.run([pointwear_exe, "motion", "import", str(bad), "--out", str(tmp_path / "b.npz")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Fuss" in proc.stderr and "bvh_names.json" in proc.stderr
