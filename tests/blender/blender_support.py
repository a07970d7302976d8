"""Helpers shared by the Blender-side tests (imported by conftest.py and the test modules).

Nothing here imports bpy at module level: conftest.py must set up the user folders first.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build_extension.py"
ADDON_ID = "pointwear"
REPO_MODULE = "user_default"
ADDON_MODULE = "bl_ext.{}.{}".format(REPO_MODULE, ADDON_ID)
PANEL = "VIEW3D_PT_pointwear"
OPERATORS = {"check_backend": "POINTWEAR_OT_check_backend"}  # bpy.ops.pointwear.<key>: class name

# Per-folder overrides take precedence over BLENDER_USER_RESOURCES; drop them so it governs all.
USER_ENV_OVERRIDES = (
    "BLENDER_USER_CONFIG",
    "BLENDER_USER_SCRIPTS",
    "BLENDER_USER_DATAFILES",
    "BLENDER_USER_EXTENSIONS",
)


def isolate_blender_env(env, user_resources) -> None:
    """Point bpy's writes away from HOME: user folders (config, scripts, extensions) under
    ``user_resources``, and the XDG cache (bpy creates ``thumbnails/`` there when imported) too."""
    for name in USER_ENV_OVERRIDES:
        env.pop(name, None)
    env["BLENDER_USER_RESOURCES"] = str(user_resources)
    env["XDG_CACHE_HOME"] = os.path.join(str(user_resources), "xdg-cache")


def blender_env(user_resources, home=None) -> dict:
    """Environment for a child Python that imports bpy with its own user folders (and HOME)."""
    env = dict(os.environ)
    isolate_blender_env(env, user_resources)
    if home is not None:
        env["HOME"] = str(home)
    return env


def run_python(code: str, *, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this one: the venv with bpy); assert it succeeded."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO),
    )
    assert proc.returncode == 0, "child Python failed ({}):\n--- stdout\n{}\n--- stderr\n{}".format(
        proc.returncode, proc.stdout, proc.stderr)
    return proc


def backend_python() -> Path:
    """The backend's Python (with torch and the ``pointwear`` package): $POINTWEAR_BACKEND_PYTHON,
    else REPO/.venv/bin/python. The Blender-side tests never import the backend themselves (the
    bpy 5 lane has no torch); they run it as a child process, as the add-on does."""
    return Path(os.environ.get("POINTWEAR_BACKEND_PYTHON") or REPO / ".venv" / "bin" / "python")


def run_backend(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    """``<backend python> -m pointwear ARGS``; assert it succeeded."""
    exe = backend_python()
    assert exe.is_file(), "backend Python not found: {} (set POINTWEAR_BACKEND_PYTHON)".format(exe)
    proc = subprocess.run([str(exe), "-m", "pointwear", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=str(REPO))
    assert proc.returncode == 0, "pointwear {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}".format(
        " ".join(map(str, args)), proc.returncode, proc.stdout, proc.stderr)
    return proc


def find_blender_ext() -> Path:
    """blender_ext.py from the installed bpy wheel, found the way the build script finds it."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import build_extension
    finally:
        sys.path.pop(0)
    return build_extension.find_blender_ext()


def scripts_module(name: str):
    """A module of scripts/ (build_extension, build_wheel), imported by name."""
    import importlib

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def product_version() -> str:
    """The product's one version (VERSION in addon/link/protocol.py), read as the build reads it."""
    return scripts_module("build_wheel").product_version(REPO)


def repo_index(bpy, module: str = REPO_MODULE) -> int:
    return [repo.module for repo in bpy.context.preferences.extensions.repos].index(module)


def handler_snapshot(bpy) -> dict:
    """Every list in bpy.app.handlers (private ones included), as tuples of the callables."""
    handlers = bpy.app.handlers
    return {
        name: tuple(getattr(handlers, name))
        for name in dir(handlers)
        if isinstance(getattr(handlers, name), list)
    }


class TimerRecorder:
    """Wraps bpy.app.timers.register/unregister to record registrations (bpy cannot list timers).

    Code calling ``bpy.app.timers.register(...)`` looks the function up at call time, so every
    timer registered while the recorder is active is seen.
    """

    def __init__(self, bpy):
        self._timers = bpy.app.timers
        self._orig = (self._timers.register, self._timers.unregister)
        self.registered: list = []
        self.unregistered: list = []

    def __enter__(self):
        orig_register, orig_unregister = self._orig

        def register(function, *args, **kwargs):
            self.registered.append(function)
            return orig_register(function, *args, **kwargs)

        def unregister(function):
            self.unregistered.append(function)
            return orig_unregister(function)

        self._timers.register = register
        self._timers.unregister = unregister
        return self

    def __exit__(self, *exc):
        self._timers.register, self._timers.unregister = self._orig
        return False

    def still_registered(self) -> list:
        return [fn for fn in self.registered if self._timers.is_registered(fn)]


def addon_imports() -> dict[str, set[str]]:
    """Top-level modules imported (absolutely) by each file of addon/, by relative path."""
    found = {}
    for path in sorted((REPO / "addon").rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[path.relative_to(REPO / "addon").as_posix()] = names
    return found


class RecordingLayout:
    """Stands in for bpy.types.UILayout (no window in background mode): records what is drawn."""

    def __init__(self, calls=None):
        self.calls = [] if calls is None else calls
        self.use_property_split = False

    def label(self, text="", **kwargs):
        self.calls.append(("label", text))

    def prop(self, data, prop, **kwargs):
        self.calls.append(("prop", prop))

    def operator(self, idname, **kwargs):
        self.calls.append(("operator", idname))

    def separator(self, **kwargs):
        pass

    def progress(self, text="", **kwargs):
        self.calls.append(("progress", text))

    def row(self, **kwargs):
        return RecordingLayout(self.calls)

    column = box = split = row

    def labels(self):
        return [text for kind, text in self.calls if kind == "label"]

    def props(self):
        return [name for kind, name in self.calls if kind == "prop"]

    def operators(self):
        return [name for kind, name in self.calls if kind == "operator"]


class FakeSelf:
    """``self`` for calling a Panel/AddonPreferences ``draw`` with a RecordingLayout."""

    def __init__(self, layout, **attrs):
        self.layout = layout
        self.__dict__.update(attrs)


def evaluated_positions(bpy, obj, world: bool = False):
    """(V, 3) float64 positions of the object's vertices after its modifiers (skinning), in the
    object's own space, or in world space with `world`."""
    import numpy as np

    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    mesh = ev.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    co = co.reshape(-1, 3).astype(np.float64)
    if not world:
        return co
    m = np.array(obj.matrix_world, np.float64)
    return co @ m[:3, :3].T + m[:3, 3]
