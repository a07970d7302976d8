"""The add-on's installer logic without Blender (addon/installer: pure standard library): wheel
choice, the environment layout's atomic switch, the version verdicts, the torch build and index,
the NVIDIA driver lookup, and pip failures turned into messages. The real install runs in
tests/blender/test_install.py."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from addon.installer import job as J  # noqa: E402
from addon.installer import layout as L  # noqa: E402
from addon.installer import machine as M  # noqa: E402
from addon.link import protocol  # noqa: E402

versions = st.lists(st.integers(0, 300), min_size=1, max_size=4)


@given(versions)
def test_wheel_version_reads_what_build_wheel_names(parts):
    text = ".".join(map(str, parts))
    assert J.wheel_version("/x/pointwear-{}-py3-none-any.whl".format(text)) == tuple(parts)
    for other in ("pointwear-{}-cp311-cp311-linux_x86_64.whl", "pointwear-{}.tar.gz",
                  "pointwearx-{}-py3-none-any.whl", "pointwear-{}-requirements.txt"):
        assert J.wheel_version(other.format(text)) is None


@given(st.lists(versions, min_size=1, max_size=6, unique_by=tuple))
def test_find_wheel_takes_the_newest_of_the_first_folder_that_has_one(tmp_path_factory, found):
    studio, bundled = tmp_path_factory.mktemp("studio"), tmp_path_factory.mktemp("bundled")
    (bundled / "pointwear-0.0.1-py3-none-any.whl").write_bytes(b"")
    for parts in found:
        (studio / "pointwear-{}-py3-none-any.whl".format(".".join(map(str, parts)))).write_bytes(b"")
    (studio / "notes.txt").write_text("")
    chosen = J.find_wheel([str(studio), str(bundled)])
    assert J.wheel_version(chosen) == max(tuple(p) for p in found)
    assert J.find_wheel(["", str(tmp_path_factory.mktemp("empty")), str(bundled)]).startswith(str(bundled))


def test_find_wheel_and_requirements_say_what_is_missing(tmp_path):
    with pytest.raises(J.InstallError) as info:
        J.find_wheel([str(tmp_path), str(tmp_path / "gone")])
    assert str(tmp_path) in info.value.message and "Reinstall" in info.value.hint
    wheel = tmp_path / "pointwear-1.2.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    with pytest.raises(J.InstallError, match="pointwear-1.2.0-requirements.txt"):
        J.requirements_for(str(wheel))
    (tmp_path / "pointwear-1.2.0-requirements.txt").write_text("# pins\ntorch==2.13.0\n\nnumpy==1.26.4  # x\n")
    assert J.read_pins(J.requirements_for(str(wheel))) == ["torch==2.13.0", "numpy==1.26.4"]


def make_env(layout: L.EnvLayout) -> str:
    env = layout.new_env_dir()
    python = Path(L.venv_python(env))
    python.parent.mkdir(parents=True)
    python.write_text("")
    return env


def test_layout_switches_in_one_replace_and_removes_only_other_envs(tmp_path):
    layout = L.EnvLayout(tmp_path / "root")
    assert layout.current_env() == "" and layout.current_info() is None and layout.log_tail() == []
    first = make_env(layout)
    second = make_env(layout)
    assert first != second
    layout.switch_to(first)
    assert layout.current_python() == L.venv_python(first)
    layout.write_info(first, {"version": "1.0.0", "protocol": 1})
    assert layout.current_info() == {"version": "1.0.0", "protocol": 1}
    assert layout.remove_others() == [] and not os.path.exists(second)
    assert sorted(os.listdir(layout.root)) == [L.POINTER, L.ENVS]  # no temporary file left
    with pytest.raises(ValueError):
        layout.switch_to(str(tmp_path / "elsewhere" / "env-x"))
    # A pointer naming something outside envs/ or an env without Python counts as none.
    for name in ("../x", "/etc", ".hidden", "env-missing"):
        (Path(layout.root) / L.POINTER).write_text(json.dumps({"env": name}))
        assert layout.current_env() == ""
    (Path(layout.root) / L.POINTER).write_text("not json")
    assert layout.current_env() == ""
    assert layout.remove_all() and not os.path.exists(layout.envs_dir)


def test_log_tail(tmp_path):
    layout = L.EnvLayout(tmp_path)
    Path(layout.log_path).write_text("".join("line {}\n".format(i) for i in range(100)))
    assert layout.log_tail(3) == ["line 97", "line 98", "line 99"]


def test_compatibility_says_which_side_to_update():
    v, p = "1.4.0", 3
    assert L.compatibility({"version": v, "protocol": p}, v, p)[0] == L.FITS
    verdict, message = L.compatibility({"version": "1.3.0", "protocol": p}, v, p)
    assert verdict == L.VERSION_DIFFERS and "work together" in message
    verdict, message = L.compatibility({"version": "1.0.0", "protocol": 2}, v, p)
    assert verdict == L.UPDATE_BACKEND and message.endswith("Update Backend") and "1.0.0" in message
    verdict, message = L.compatibility({"version": "2.0.0", "protocol": 4}, v, p)
    assert verdict == L.UPDATE_ADDON and "update the add-on" in message and "2.0.0" in message
    for bad in ({"version": "x"}, {"protocol": "1"}, {"protocol": True}):
        assert L.compatibility(bad, v, p)[0] == L.UPDATE_BACKEND


def test_torch_build_and_index():
    assert M.torch_build("AUTO", "550.54") == M.CUDA and M.torch_build("AUTO", "") == M.CPU
    assert M.torch_build("CPU", "550.54") == M.CPU and M.torch_build("CUDA", "") == M.CUDA
    assert M.torch_index(M.CPU, platform="linux") == M.TORCH_CPU_INDEX
    assert M.torch_index(M.CPU, platform="win32") == M.TORCH_CPU_INDEX
    assert M.torch_index(M.CPU, platform="darwin") == ""
    assert M.torch_index(M.CUDA, platform="linux") == ""  # PyPI's Linux wheels carry CUDA
    assert M.torch_index(M.CUDA, platform="win32") == M.TORCH_CUDA_INDEX_WINDOWS
    assert M.torch_index(M.CUDA, " https://mirror/whl ", "linux") == "https://mirror/whl"


def test_nvidia_driver_from_proc_file_and_none(tmp_path):
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n"
                    "GCC version:  gcc version 12.2.0\n")
    assert M.nvidia_driver(str(proc), smi="no-such-nvidia-smi") == "550.54.14"
    assert M.nvidia_driver(str(tmp_path / "none"), smi="no-such-nvidia-smi") == ""


def test_probe_python(tmp_path):
    ok, message = M.probe_python(sys.executable)
    assert ok and "3.11" in message
    assert M.probe_python("")[0] is False
    assert "not found" in M.probe_python(str(tmp_path / "python"))[1]
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\necho '{\"version\": [3, 12, 1], \"venv\": true, \"executable\": \"x\"}'\n")
    script.chmod(0o755)
    assert M.probe_python(str(script)) == (False, "{} is Python 3.12; the backend needs 3.11".format(script))


def test_pip_failure_message_names_the_missing_wheel():
    tail = ["Looking in links: /w", "ERROR: Could not find a version that satisfies the requirement "
            "jaxlib==0.7.1 (from versions: none)", "ERROR: No matching distribution found for jaxlib==0.7.1"]
    error = J._failure("Installing packages", 1, tail, "/log")
    assert error.message == ("Installing packages failed (exit 1): No matching distribution found "
                             "for jaxlib==0.7.1")
    assert "pip download jaxlib==0.7.1 -d <folder>" in error.hint and error.hint.endswith("/log")
    assert J._failure("x", 2, [], "/log").message == "x failed (exit 2): no output"


def test_install_job_fails_early_without_touching_the_current_env(tmp_path):
    """A Python that is not 3.11: the job fails in its first step, the current env stays."""
    layout = L.EnvLayout(tmp_path / "root")
    current = make_env(layout)
    layout.switch_to(current)
    wheel = tmp_path / "pointwear-{}-py3-none-any.whl".format(protocol.VERSION)
    wheel.write_bytes(b"")
    (tmp_path / "pointwear-{}-requirements.txt".format(protocol.VERSION)).write_text("torch==2.13.0\n")
    old = tmp_path / "python"
    old.write_text("#!/bin/sh\necho '{\"version\": [3, 10, 0], \"venv\": true, \"executable\": \"x\"}'\n")
    old.chmod(0o755)
    job = J.InstallJob(layout, J.InstallOptions(str(old), str(wheel), J.requirements_for(str(wheel))))
    progress = job.run()
    assert progress.state == J.FAILED and "needs 3.11" in progress.message
    assert "Python for the Backend" in progress.hint
    assert layout.current_env() == current and os.listdir(layout.envs_dir) == [os.path.basename(current)]
    assert "FAILED: " in Path(layout.log_path).read_text()
    with pytest.raises(RuntimeError):
        job.run()


def test_doctor_job_reports_a_missing_backend(tmp_path):
    progress = J.DoctorJob(str(tmp_path / "nope"), str(tmp_path)).run()
    assert progress.state == J.FAILED and "Install Backend" in progress.hint


def test_doctor_job_runs_the_real_doctor(tmp_path):
    job = J.DoctorJob(sys.executable, str(tmp_path / "work"), str(tmp_path / "doctor.json"),
                      blender="4.5.15", quick=True)
    progress = job.run()
    assert progress.state == J.DONE and progress.message.startswith("All ")
    assert json.loads((tmp_path / "doctor.json").read_text()) == job.report
