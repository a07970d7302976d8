"""Install Backend from the add-on: the real add-on (built zip) in real bpy builds a real virtual
environment from a local wheelhouse made here, with no network, starts that backend and runs jobs
through it; a failed update and a cancelled one leave it working; a backend of another protocol is
reported with the side to update; Run Diagnostics reads `pointwear doctor --json` from it.

How it stays fast and offline (docs/install.md, "Tests"): the wheelhouse holds the Pointwear wheel
built by scripts/build_wheel.py; the add-on's "Offline" mode gives pip ``--no-index`` with only
that folder (pip's configuration ignored); torch and the other pinned packages come from the
add-on's "Shared Packages From" option pointed at the backend test environment (.venv), the
feature studios use to reuse a central CUDA torch. pip still resolves every pin against them and
installs the Pointwear wheel into the new environment, and the check step requires that the
backend imports from there. A full install from wheels is measured by scripts/bench_install.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from blender_support import (
    ADDON_MODULE,
    REPO,
    FakeSelf,
    RecordingLayout,
    backend_python,
    product_version,
    scripts_module,
)

TINY_SYNTH = {"frames": 2, "size": 64, "outfit": "tshirt-shorts", "seed": 0, "points": 512,
              "sheet": False}
TINY_FIT = {"template": "TSHIRT_SHORTS", "codes": 1, "coarse_steps": 2, "fine_steps": 2}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """A local wheel folder with the Pointwear wheel (and its pins), built from this checkout."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    scripts_module("build_wheel").build(folder)
    return folder


@pytest.fixture(scope="module")
def newer_wheelhouse(tmp_path_factory) -> Path:
    """A wheel folder with a Pointwear 99.0.0 that speaks protocol 99: built by the same script
    from a copy of the sources whose protocol module says so."""
    root = tmp_path_factory.mktemp("newer-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root)
    (root / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "requirements.txt", root / "scripts")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "backend", root / "backend", ignore=ignore)
    shutil.copytree(REPO / "addon" / "link", root / "addon" / "link", ignore=ignore)
    proto = root / "addon" / "link" / "protocol.py"
    text = proto.read_text()
    text = text.replace('VERSION = "{}"'.format(product_version()), 'VERSION = "99.0.0"', 1)
    text = text.replace("PROTOCOL_VERSION = 1\n", "PROTOCOL_VERSION = 99\n", 1)
    proto.write_text(text)
    folder = tmp_path_factory.mktemp("newer-wheelhouse")
    wheel = scripts_module("build_wheel").build(folder, root)
    assert wheel.name == "pointwear-99.0.0-py3-none-any.whl"
    return folder


@pytest.fixture
def addon(installed_addon, tmp_path, wheelhouse):
    """The installed add-on set up for an offline install from ``wheelhouse`` sharing .venv's
    packages; the backend environments are removed again afterwards."""
    bpy = installed_addon["bpy"]
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    exe = backend_python()
    assert exe.is_file(), "backend Python not found: {} (set POINTWEAR_BACKEND_PYTHON)".format(exe)
    prefs.backend_python = ""
    prefs.wheel_folder = str(wheelhouse)
    prefs.offline = True
    prefs.shared_python = str(exe)
    prefs.torch_build = "CPU"
    prefs.work_folder = str(tmp_path / "work")
    prefs.device = "CPU"

    class NS:
        pass

    ns = NS()
    ns.bpy, ns.prefs, ns.props, ns.ops = bpy, prefs, bpy.context.scene.pointwear, bpy.ops.pointwear
    ns.runtime = sys.modules[ADDON_MODULE + ".operators.runtime"]
    ns.install = sys.modules[ADDON_MODULE + ".operators.install"]
    ns.protocol = sys.modules[ADDON_MODULE + ".link.protocol"]
    ns.root = Path(bpy.utils.extension_path_user(ADDON_MODULE, path="backend"))
    try:
        yield ns
    finally:
        ns.runtime.stop()
        if ns.ops.remove_backend.poll():
            ns.ops.remove_backend()
    assert not (ns.root / "envs").exists()


def poll_message(op) -> str:
    assert op.poll() is False
    with pytest.raises(RuntimeError) as info:
        op()
    return str(info.value)


def env_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "envs").iterdir())


def prefs_text(addon) -> list[str]:
    layout = RecordingLayout()
    type(addon.prefs).draw(FakeSelf(layout), addon.bpy.context)
    return layout.labels()


def test_install_start_jobs_failed_and_cancelled_updates_remove(addon):
    ops, install, runtime, P = addon.ops, addon.install, addon.runtime, addon.protocol
    assert "No backend: use Install Backend" in poll_message(ops.start_backend)
    assert "No backend is installed yet" in poll_message(ops.update_backend)
    assert "No backend yet: Preferences > Add-ons > Pointwear > Install Backend" in " ".join(
        sidebar_text(addon))

    # Install: a real venv under the extension's user folder, from the wheelhouse only.
    assert ops.install_backend() == {"FINISHED"}
    python = runtime.backend_python_path()
    assert Path(python).is_file() and Path(python).is_relative_to(addon.root / "envs")
    info = install.installed_info()
    assert (info["version"], info["protocol"]) == (product_version(), 1)
    assert info["torch"].startswith("2.") and info["torch_build"] == "cpu" and info["offline"]
    assert Path(info["location"]).is_relative_to(addon.root / "envs")  # not the editable checkout
    log = (addon.root / "install.log").read_text()
    assert "--no-index" in log and "== Installing Pointwear" in log and "Successfully installed" in log
    text = prefs_text(addon)
    assert any("Backend {} installed: torch".format(product_version()) in t for t in text), text
    assert any("matches the add-on" in t for t in text), text
    first = env_names(addon.root)
    assert len(first) == 1

    # A failed update: without the shared packages the wheelhouse lacks torch. It says so, and the
    # environment in use stays (the new one is deleted).
    addon.prefs.shared_python = ""
    with pytest.raises(RuntimeError, match="Installing PyTorch"):
        ops.update_backend()  # an error report: scripts get an exception
    failed = install.current_job().poll()
    assert failed.state == P.FAILED
    assert failed.message.startswith("Installing PyTorch (CPU) failed (exit 1): No matching "
                                     "distribution found for torch=="), failed.message
    assert "is neither in the wheel folder nor on the index" in failed.hint
    assert str(addon.root / "install.log") in failed.hint
    assert env_names(addon.root) == first and runtime.backend_python_path() == python
    text = prefs_text(addon)
    assert any("No matching distribution found for torch" in t for t in text), text

    # A cancelled update (polled, as the UI's timer would): nothing changes either.
    addon.prefs.shared_python = str(backend_python())
    job = install.start_install(addon.bpy.context, blocking=False)
    deadline = time.monotonic() + 60
    # Past its first step (with shared packages the venv step alone can take under a poll's
    # 50 ms on an idle machine; the pip steps after it take seconds), cancelled mid-way.
    while job.poll().step in ("", "Checking Python") and not job.finished:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not job.finished, job.poll()
    assert install.pump() is True
    assert "pointwear.cancel_backend_install" in _operators_drawn(addon)
    job.cancel()
    assert job.wait(60).state == P.CANCELLED
    assert install.pump() is False
    assert env_names(addon.root) == first and runtime.backend_python_path() == python

    # The installed backend starts, makes a synthetic subject and fits it.
    assert ops.start_backend() == {"FINISHED"}
    session = runtime.session()
    assert session.launcher.python == python and session.server_version == product_version()
    assert "Stop the backend first" in poll_message(ops.update_backend)
    assert "Stop the backend first" in poll_message(ops.remove_backend)
    job = runtime.submit(addon.bpy.context, "synth", TINY_SYNTH)
    ok, message = runtime.wait_job(addon.bpy.context, job, timeout=300, echo=False)
    assert ok and job.state == P.STATE_DONE, (message, job.error)
    subject = Path(job.files["subject"])
    props = addon.props
    props.subject_folder = str(subject)
    props.fit_drape = "PARAMETRIC"
    props.fit_template = TINY_FIT["template"]
    props.fit_codes = TINY_FIT["codes"]
    props.fit_coarse_steps = TINY_FIT["coarse_steps"]
    props.fit_fine_steps = TINY_FIT["fine_steps"]
    assert ops.fit_outfit() == {"FINISHED"}
    assert props.job_state == P.STATE_DONE and (Path(props.result_folder) / "outfit.npz").is_file()
    assert ops.stop_backend() == {"FINISHED"}

    # Remove: the environments go, Start Backend says to install.
    assert ops.remove_backend() == {"FINISHED"}
    assert not (addon.root / "envs").exists() and runtime.backend_python_path() == ""
    assert "No backend: use Install Backend" in poll_message(ops.start_backend)


def sidebar_text(addon) -> list[str]:
    layout = RecordingLayout()
    panel = getattr(addon.bpy.types, "VIEW3D_PT_pointwear")
    panel.draw(FakeSelf(layout), addon.bpy.context)
    return layout.labels()


def _operators_drawn(addon) -> list[str]:
    layout = RecordingLayout()
    type(addon.prefs).draw(FakeSelf(layout), addon.bpy.context)
    return layout.operators()


def test_backend_of_another_protocol_says_which_side_to_update(addon, newer_wheelhouse):
    addon.prefs.wheel_folder = str(newer_wheelhouse)
    assert addon.ops.install_backend() == {"FINISHED"}
    info = addon.install.installed_info()
    assert (info["version"], info["protocol"]) == ("99.0.0", 99)
    expected = ("The installed backend 99.0.0 speaks protocol 99, this add-on {} only 1: update "
                "the add-on".format(product_version()))
    text = prefs_text(addon)
    assert any(t.startswith(expected) for t in text), text
    assert expected in poll_message(addon.ops.start_backend)
    assert expected in " ".join(sidebar_text(addon))  # wrapped to the sidebar's width
    # Setting a Backend Python of its own bypasses the installed backend (and the check).
    addon.prefs.backend_python = str(backend_python())
    assert addon.ops.start_backend.poll() is True
    assert any("installed backend is not used" in t for t in prefs_text(addon))


def test_diagnostics_reads_the_doctor_report_of_the_backend_in_use(addon):
    # The quick way to a backend here: the preferences' Backend Python (the test environment).
    addon.prefs.backend_python = str(backend_python())
    # Quick: the smoke fit is tested in tests/test_doctor.py.
    assert addon.ops.run_diagnostics(quick=True) == {"FINISHED"}
    report = addon.install.last_doctor_report()
    assert report["ok"] is True and report["python"] == str(backend_python())
    names = {c["name"] for c in report["checks"]}
    assert {"python", "package torch", "device", "work folder", "default body"} <= names
    saved = json.loads((addon.root / "doctor.json").read_text())
    assert saved == report
    text = prefs_text(addon)
    assert any(t.startswith("work folder: ") and addon.prefs.work_folder in t for t in text), text
    blender = next(c for c in report["checks"] if c["name"] == "blender")
    assert "asked by Blender " + addon.bpy.app.version_string in blender["detail"]
    # A work folder that cannot be made: a failed check with its fix, shown in the panel.
    blocker = Path(addon.prefs.work_folder).parent / "file"
    blocker.write_text("x")
    addon.prefs.work_folder = str(blocker / "work")
    assert addon.ops.run_diagnostics(quick=True) == {"FINISHED"}  # it ran; it found a problem
    report = addon.install.last_doctor_report()
    assert report["ok"] is False and "smoke test" not in {c["name"] for c in report["checks"]}
    text = prefs_text(addon)
    assert any(t.startswith("work folder: cannot write") for t in text), text
    assert any(t.startswith("Fix: Set Preferences > Add-ons > Pointwear > Work Folder") for t in text)


def test_legacy_addon_keeps_its_backend_in_blender_user_data(addon, monkeypatch):
    """Loaded as a legacy add-on (package ``pointwear``, not ``bl_ext.<repo>.pointwear``),
    extension_path_user refuses the package: the backend goes to Blender's user data folder."""
    preferences = sys.modules[ADDON_MODULE + ".preferences"]
    assert Path(preferences.backend_root()) == addon.root
    monkeypatch.setattr(preferences, "ADDON_PACKAGE", "pointwear")
    with pytest.raises(ValueError):
        addon.bpy.utils.extension_path_user("pointwear", path="backend")
    assert preferences.backend_root() == ""  # nothing there yet, nothing created
    legacy = Path(preferences.backend_root(create=True))
    try:
        assert legacy.is_dir()
        assert legacy == Path(addon.bpy.utils.user_resource("DATAFILES", path="pointwear/backend"))
        assert legacy.is_relative_to(os.environ["BLENDER_USER_RESOURCES"])
    finally:
        shutil.rmtree(legacy.parent)
