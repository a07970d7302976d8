"""The Pointwear extension: built with Blender's own CLI, installed, enabled and removed in real bpy."""

from __future__ import annotations

import importlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from blender_support import (
    ADDON_ID,
    ADDON_MODULE,
    OPERATORS,
    PANEL,
    REPO,
    REPO_MODULE,
    FakeSelf,
    RecordingLayout,
    addon_imports,
    blender_env,
    find_blender_ext,
    handler_snapshot,
    product_version,
    run_python,
    scripts_module,
)

POLL_MESSAGE = ("No backend: use Install Backend (or set the backend Python) in Preferences > "
                  "Add-ons > Pointwear")


# (a) build ------------------------------------------------------------------------------------------

def test_build_script_produces_a_valid_zip(built_extension):
    proc, zip_path = built_extension
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = product_version()
    assert zip_path is not None and zip_path.name == "{}-{}.zip".format(ADDON_ID, version)
    assert zip_path.is_file()

    names = set(zipfile.ZipFile(zip_path).namelist())
    expected = {"blender_manifest.toml", "__init__.py", "preferences.py", "properties.py",
                "panels.py", "operators/__init__.py", "link/__init__.py"}
    assert expected <= names, sorted(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")], sorted(names)
    # The backend wheel rides along (not as a Blender-installed wheel: the manifest lists none),
    # with its data files and its pins.
    wheel = "backend_wheel/pointwear-{}-py3-none-any.whl".format(version)
    assert {wheel, "backend_wheel/pointwear-{}-requirements.txt".format(version)} <= names
    with zipfile.ZipFile(zip_path) as zf, zf.open(wheel) as fh:
        inner = set(zipfile.ZipFile(io.BytesIO(fh.read())).namelist())
    assert {"pointwear/body/data/default_body.npz", "pointwear/drape/data/neural_default.pt",
            "pointwear/perception/data/pose_prior.npz", "pointwear/link/protocol.py"} <= inner

    # Validate again, independently of the script, with Blender's own CLI.
    check = subprocess.run([sys.executable, str(find_blender_ext()), "validate", str(zip_path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_build_script_fails_loudly_on_a_bad_manifest(tmp_path):
    # A copy of the sources whose manifest Blender rejects (the tagline ends with punctuation):
    # the script must exit non-zero, pass on the CLI's message and leave no zip.
    src = tmp_path / "src"
    (src / "scripts").mkdir(parents=True)
    for name in ("build_extension.py", "build_wheel.py", "requirements.txt"):
        shutil.copy2(REPO / "scripts" / name, src / "scripts")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src)
    for name in ("addon", "backend"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    lines = (REPO / "blender_manifest.toml").read_text().splitlines()
    lines = ['tagline = "Ends with a full stop."' if ln.startswith("tagline") else ln for ln in lines]
    (src / "blender_manifest.toml").write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, str(src / "scripts" / "build_extension.py"),
                           "--out-dir", str(tmp_path / "dist")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "tagline" in proc.stderr and "punctuation" in proc.stderr, proc.stderr
    assert not list((tmp_path / "dist").glob("*.zip"))


def test_build_refuses_a_manifest_of_another_version():
    build_extension = scripts_module("build_extension")
    assert build_extension.check_version({"version": product_version()}) == product_version()
    with pytest.raises(build_extension.BuildError) as info:
        build_extension.check_version({"version": "9.9.9"})
    assert "'9.9.9'" in str(info.value) and repr(product_version()) in str(info.value)


# (b) install + enable ----------------------------------------------------------------------------------

def test_install_enables_addon_and_registers_everything(installed_addon):
    import addon_utils

    bpy = installed_addon["bpy"]
    assert addon_utils.check(ADDON_MODULE) == (True, True)
    assert ADDON_MODULE in bpy.context.preferences.addons
    module = sys.modules[ADDON_MODULE]
    assert Path(module.__file__).parent.name == ADDON_ID
    assert importlib.import_module(ADDON_MODULE + ".link").PROTOCOL_VERSION == 1

    panel = getattr(bpy.types, PANEL, None)
    assert panel is not None and panel.is_registered
    assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category, panel.bl_label) == (
        "VIEW_3D", "UI", "Pointwear", "Pointwear")
    for op_name, cls_name in OPERATORS.items():
        assert op_name in dir(bpy.ops.pointwear)
        assert hasattr(bpy.types, cls_name)

    props = bpy.context.scene.pointwear
    assert props.backend_state == "not started"
    assert props.subject_folder == "" and props.result_folder == ""

    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    assert type(prefs).bl_idname == ADDON_MODULE
    assert (prefs.host, prefs.port, prefs.device) == ("127.0.0.1", 0, "AUTO")
    assert (prefs.backend_python, prefs.token, prefs.work_folder, prefs.smpl_model_path) == ("",) * 4
    assert (prefs.fingerprint, prefs.file_transfer) == ("", "AUTO")   # plain TCP on this machine

    # Panel and preferences draw (no window in background mode: draw into a recording layout).
    layout = RecordingLayout()
    panel.draw(FakeSelf(layout), bpy.context)
    assert any("not started" in text for text in layout.labels()), layout.calls
    assert "subject_folder" in layout.props(), layout.calls
    assert "pointwear.check_backend" in layout.operators(), layout.calls
    layout = RecordingLayout()
    type(prefs).draw(FakeSelf(layout), bpy.context)
    assert set(layout.props()) == {"backend_python", "device", "host", "port", "token", "fingerprint",
                                   "file_transfer", "work_folder", "smpl_model_path", "torch_build",
                                   "wheel_folder", "offline", "install_python", "shared_python",
                                   "torch_index_url"}, layout.calls
    assert {"pointwear.install_backend", "pointwear.update_backend", "pointwear.remove_backend",
            "pointwear.run_diagnostics"} <= set(layout.operators()), layout.calls
    assert any("No backend installed" in text for text in layout.labels()), layout.calls


# (c) disable / unregister --------------------------------------------------------------------------

def test_disable_removes_everything_and_leaves_handlers_and_timers_alone(installed_addon):
    import addon_utils

    bpy = installed_addon["bpy"]
    timers = installed_addon["timers"]

    def assert_all_gone():
        assert addon_utils.check(ADDON_MODULE)[1] is False
        assert ADDON_MODULE not in bpy.context.preferences.addons
        assert not hasattr(bpy.types, PANEL)
        for op_name, cls_name in OPERATORS.items():
            assert op_name not in dir(bpy.ops.pointwear)
            assert not hasattr(bpy.types, cls_name)
        assert not hasattr(bpy.types.Scene, "pointwear")
        assert not hasattr(bpy.context.scene, "pointwear")
        assert handler_snapshot(bpy) == installed_addon["handlers_before"]
        assert timers.still_registered() == [], timers.registered

    addon_utils.disable(ADDON_MODULE, default_set=True)
    assert_all_gone()

    # Enabling again after a disable re-registers cleanly; disabling again cleans up again.
    addon_utils.enable(ADDON_MODULE, default_set=True)
    assert hasattr(bpy.types, PANEL) and hasattr(bpy.context.scene, "pointwear")
    addon_utils.disable(ADDON_MODULE, default_set=True)
    assert_all_gone()


# (d) the operator: poll message and behaviour -------------------------------------------------------

def test_check_backend_poll_message_when_python_not_set(installed_addon):
    bpy = installed_addon["bpy"]
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    for unset in ("", "   "):
        prefs.backend_python = unset
        assert bpy.ops.pointwear.check_backend.poll() is False
        with pytest.raises(RuntimeError) as info:
            bpy.ops.pointwear.check_backend()
        assert POLL_MESSAGE in str(info.value)


def test_check_backend_reports_whether_python_exists(installed_addon, tmp_path):
    bpy = installed_addon["bpy"]
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.backend_python = sys.executable
    assert bpy.ops.pointwear.check_backend.poll() is True
    assert bpy.ops.pointwear.check_backend() == {"FINISHED"}
    prefs.backend_python = str(tmp_path / "no-such-python")
    assert bpy.ops.pointwear.check_backend() == {"CANCELLED"}


# The whole lifecycle in a fresh process -------------------------------------------------------------

def test_lifecycle_in_fresh_process_keeps_home_clean(extension_zip, tmp_path):
    """Install, enable, disable, uninstall in a new interpreter with its own user folder and HOME:
    the process must exit (a leftover timer would hang it) and, given BLENDER_USER_RESOURCES and
    XDG_CACHE_HOME, write nothing into HOME."""
    user, home = tmp_path / "user", tmp_path / "home"
    user.mkdir()
    home.mkdir()
    code = f"""
        import json, sys, bpy, addon_utils
        mod = {ADDON_MODULE!r}
        def handlers():
            h = bpy.app.handlers
            return {{n: len(getattr(h, n)) for n in dir(h) if isinstance(getattr(h, n), list)}}
        before = handlers()
        r = bpy.ops.extensions.package_install_files(
            filepath={str(extension_zip)!r}, repo={REPO_MODULE!r}, enable_on_install=True)
        out = {{"install": sorted(r), "enabled": addon_utils.check(mod)[1],
               "panel": hasattr(bpy.types, {PANEL!r}),
               "scene_prop": hasattr(bpy.types.Scene, "pointwear"),
               "file": sys.modules[mod].__file__}}
        addon_utils.disable(mod, default_set=True)
        out.update(disabled=not addon_utils.check(mod)[1], handlers_same=before == handlers(),
                   panel_after=hasattr(bpy.types, {PANEL!r}),
                   scene_prop_after=hasattr(bpy.types.Scene, "pointwear"))
        idx = [x.module for x in bpy.context.preferences.extensions.repos].index({REPO_MODULE!r})
        out["uninstall"] = sorted(bpy.ops.extensions.package_uninstall(repo_index=idx, pkg_id={ADDON_ID!r}))
        print("RESULT " + json.dumps(out))
    """
    proc = run_python(code, env=blender_env(user, home=home), timeout=120)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["install"] == ["FINISHED"] and out["uninstall"] == ["FINISHED"], out
    assert out["enabled"] and out["panel"] and out["scene_prop"], out
    assert out["disabled"] and out["handlers_same"], out
    assert not out["panel_after"] and not out["scene_prop_after"], out
    assert Path(out["file"]).is_relative_to(user), out
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []


# The add-on's import rules ----------------------------------------------------------------------------

BLENDER_MODULES = {"bpy", "bpy_extras", "mathutils", "addon_utils", "bl_math", "bmesh", "gpu"}


def test_addon_imports_only_bpy_stdlib_and_numpy():
    for rel, names in addon_imports().items():
        bad = {n for n in names
               if n not in sys.stdlib_module_names and n not in BLENDER_MODULES and n != "numpy"}
        assert not bad, "addon/{} imports {}".format(rel, sorted(bad))
        if rel.startswith("link/"):
            assert not names & BLENDER_MODULES, "addon/{} (link/) must not import {}".format(
                rel, sorted(names & BLENDER_MODULES))


def test_link_package_imports_without_bpy():
    run_python(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import addon.link as link
        assert link.PROTOCOL_VERSION == 1
        message = {{"type": "ping", "text": "a\\nb"}}
        line = link.encode_line(message)
        assert line.endswith(b"\\n") and line.count(b"\\n") == 1, line
        assert link.decode_line(line) == message
        loaded = sorted(m for m in ("bpy", "torch", "pointwear") if m in sys.modules)
        assert not loaded, loaded
    """)
