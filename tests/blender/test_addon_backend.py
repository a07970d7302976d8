"""The add-on's backend link, jobs and operators: the real add-on (built zip) in the real bpy,
talking to the real backend process.

The backend always runs as a child process with the backend's Python ($POINTWEAR_BACKEND_PYTHON,
default REPO/.venv/bin/python), so this file also runs under the bpy 5 venv, which has no torch.
bpy here runs in background mode: the operators take their blocking path (no timers: they never
fire in background mode and would keep the process from exiting), which is what batch scripts use.
The interactive path's event pump is driven by hand in one test.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from blender_support import (
    ADDON_MODULE,
    REPO_MODULE,
    backend_python,
    blender_env,
    handler_snapshot,
    run_backend,
    run_python,
)

PYTHON_NOT_SET = ("No backend: use Install Backend (or set the backend Python) in Preferences > "
                  "Add-ons > Pointwear")
TINY_FIT = {"template": "tshirt-shorts", "codes": 1, "coarse_steps": 2, "fine_steps": 2, "refine_steps": 0, "seed": 0}
LONG_FIT = dict(TINY_FIT, coarse_steps=100000)


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    """A 3-frame 96 px synthetic subject, made by the backend CLI (child process)."""
    root = tmp_path_factory.mktemp("addon-subject")
    run_backend("synth", root / "subject", "--frames", 3, "--size", 96, "--outfit", "tshirt-shorts",
                "--seed", 0, "--points", 2048)
    return root / "subject"


@pytest.fixture(scope="module")
def motion_file(tmp_path_factory) -> Path:
    """A small AMASS-style clip (Z-up): 12 frames of gentle joint motion."""
    path = tmp_path_factory.mktemp("addon-motion") / "wave.npz"
    rng = np.random.default_rng(3)
    t = np.linspace(0.0, 1.0, 12)[:, None]
    poses = np.zeros((12, 72))
    poses[:, 3:] = 0.3 * np.sin(2 * np.pi * t + rng.uniform(0, 6, (1, 69)))
    poses[:, :3] = [np.pi / 2, 0.0, 0.0]  # stand the Y-up body up in the Z-up world
    trans = np.concatenate([0.3 * t, np.zeros_like(t), 0.9 + 0 * t], axis=1)
    np.savez(path, poses=poses, trans=trans, betas=np.zeros(16), mocap_framerate=30.0,
             gender="neutral")
    return path


@pytest.fixture
def addon(installed_addon, tmp_path):
    """The installed add-on with its preferences pointing at the backend Python, CPU, and a work
    folder of this test; yields a namespace with bpy, prefs, props and the runtime module."""
    bpy = installed_addon["bpy"]
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    exe = backend_python()
    assert exe.is_file(), "backend Python not found: {} (set POINTWEAR_BACKEND_PYTHON)".format(exe)
    prefs.backend_python = str(exe)
    prefs.work_folder = str(tmp_path / "work")
    prefs.device = "CPU"

    class NS:
        pass

    ns = NS()
    ns.bpy, ns.prefs, ns.props = bpy, prefs, bpy.context.scene.pointwear
    ns.runtime = sys.modules[ADDON_MODULE + ".operators.runtime"]
    ns.protocol = sys.modules[ADDON_MODULE + ".link.protocol"]
    ns.timers = installed_addon["timers"]
    ns.handlers_before = installed_addon["handlers_before"]
    yield ns
    # Whatever happened, no backend outlives the test (the uninstall would stop it too).
    session = ns.runtime._session
    if session is not None:
        pid = session.pid
        session.stop(timeout=5.0)
        assert pid is None or gone(pid)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


def poll_message(op) -> str:
    """The poll message of a disabled operator (what its button's tooltip shows)."""
    assert op.poll() is False
    with pytest.raises(RuntimeError) as info:
        op()
    return str(info.value)


def pointwear_objects(bpy, kind):
    return [o for o in bpy.context.scene.objects if o.get("pointwear_kind") == kind]


def vertex_coords(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


class AnyLayout:
    """Records any UILayout call (sub-panels use progress, template_icon, grid_flow, ...)."""

    def __init__(self, calls=None):
        self.calls = [] if calls is None else calls

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return AnyLayout(self.calls)

        return call

    def texts(self):
        return [kw.get("text", "") for name, _, kw in self.calls if "text" in kw]

    def operators(self):
        return [args[0] for name, args, _ in self.calls if name == "operator"]


def draw_all_panels(bpy):
    """Draw every Pointwear panel into a recording layout; returns the recorder."""
    layout = AnyLayout()

    class Self:
        pass

    for name in dir(bpy.types):
        if name.startswith("VIEW3D_PT_pointwear"):
            panel = getattr(bpy.types, name)
            me = Self()
            me.layout = layout
            panel.draw(me, bpy.context)
    return layout


def set_fit_options(props, subject, options):
    props.subject_folder = str(subject)
    props.fit_drape = "PARAMETRIC"
    props.fit_template = options["template"].upper().replace("-", "_")
    props.fit_codes = options["codes"]
    props.fit_coarse_steps = options["coarse_steps"]
    props.fit_fine_steps = options["fine_steps"]
    props.fit_refine_steps = options["refine_steps"]
    props.fit_seed = options["seed"]


# -- tests ----------------------------------------------------------------------------------------

def test_poll_messages_without_a_backend(addon):
    bpy, props, ops = addon.bpy, addon.props, addon.bpy.ops.pointwear
    assert props.backend_state == "not started"
    assert poll_message(ops.fit_outfit).endswith("Start the backend first")
    assert poll_message(ops.cancel_job).endswith("No job is running")
    assert poll_message(ops.stop_backend).endswith("The backend is not running")
    assert poll_message(ops.import_result).endswith("Set a result folder")
    assert poll_message(ops.load_motion).endswith("Select a Pointwear armature")
    assert poll_message(ops.redrape).endswith("Select a Pointwear armature")
    assert poll_message(ops.wait_job).endswith("No job to wait for")
    addon.prefs.backend_python = ""
    assert poll_message(ops.start_backend).endswith(PYTHON_NOT_SET)
    addon.prefs.port = 5555  # a running backend to connect to needs no Python
    assert ops.start_backend.poll() is True
    texts = draw_all_panels(bpy).texts()
    assert any("not started" in t for t in texts), texts
    jobs = sys.modules[ADDON_MODULE + ".operators.jobs"]
    assert jobs.parse_frames("") is None
    assert jobs.parse_frames("0, 2,4-6") == [0, 2, 4, 5, 6]
    for bad in ("a", "3-1", "1--2"):
        with pytest.raises(ValueError):
            jobs.parse_frames(bad)


def test_start_failure_names_the_problem(addon, tmp_path):
    bpy = addon.bpy
    addon.prefs.backend_python = str(tmp_path / "no-such-python")
    with pytest.raises(RuntimeError) as info:
        bpy.ops.pointwear.start_backend()
    assert "Backend Python not found" in str(info.value)
    assert addon.props.backend_state == "not found"
    assert "Preferences" in addon.props.backend_hint
    texts = draw_all_panels(bpy).texts()
    assert any("not found" in t for t in texts), texts
    # A Python without the backend: the backend's own message, and what to do about it.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"$0: No module named pointwear\" >&2\nexit 1\n")
    fake.chmod(0o755)
    addon.prefs.backend_python = str(fake)
    with pytest.raises(RuntimeError) as info:
        bpy.ops.pointwear.start_backend()
    assert "No module named pointwear" in str(info.value)
    assert addon.props.backend_state == "error"
    assert "Backend Python" in addon.props.backend_hint
    assert addon.timers.registered == []  # background mode: never a timer


def test_fit_import_cancel_redrape_motion_stop(addon, subject, motion_file, capsys):
    bpy, props, ops, runtime = addon.bpy, addon.props, addon.bpy.ops.pointwear, addon.runtime
    P = addon.protocol

    # Start (blocking in background mode).
    assert ops.start_backend() == {"FINISHED"}
    assert props.backend_state == "ready" and props.backend_device == "cpu"
    pid = runtime.session().pid
    assert pid and not gone(pid)
    assert poll_message(ops.start_backend).endswith("The backend is already running")
    assert poll_message(ops.fit_outfit).endswith("Set a subject folder")
    props.subject_folder = str(subject.parent / "missing")
    assert poll_message(ops.fit_outfit).endswith("The subject folder does not exist")

    # Fit (blocking), printing progress, then the automatic import.
    set_fit_options(props, subject, TINY_FIT)
    assert ops.fit_outfit() == {"FINISHED"}
    out = capsys.readouterr().out
    assert "Pointwear fit_outfit" in out and ": done" in out, out
    assert props.job_kind == P.KIND_FIT_OUTFIT and props.job_state == P.STATE_DONE
    params = runtime.session().jobs[props.job_id].params  # scene options as the backend spells them
    assert params == {"subject": str(subject), "drape": "parametric", "template": "tshirt-shorts",
                      "codes": 1, "coarse_steps": 2, "fine_steps": 2, "refine_steps": 0, "seed": 0}
    assert props.job_progress == pytest.approx(1.0) and props.job_stage == "Done"
    assert props.backend_state == "ready"
    result = Path(props.result_folder)
    assert (result / "outfit.npz").is_file()
    armatures = pointwear_objects(bpy, "armature")
    assert len(armatures) == 1
    armature = armatures[0]
    assert props.armature == armature and bpy.context.view_layer.objects.active == armature
    assert Path(armature["pointwear_result"]) == result
    points = pointwear_objects(bpy, "clothing_points")
    assert len(points) == 1 and points[0].parent == armature
    assert len(points[0].data.vertices) > 100
    assert pointwear_objects(bpy, "body")

    # Panels draw in every state (here: a finished job).
    layout = draw_all_panels(bpy)
    assert any("ready on cpu" in t for t in layout.texts()), layout.texts()
    assert {"pointwear.fit_outfit", "pointwear.cancel_job", "pointwear.import_result",
            "pointwear.load_motion", "pointwear.redrape", "pointwear.stop_backend"} <= set(
        layout.operators())
    assert "progress" in bpy.types.UILayout.bl_rna.functions  # Blender 4.0+: a real progress bar
    assert "progress" in [c[0] for c in layout.calls]

    # Submit without waiting, cancel, wait: cancelled (a warning, not an error).
    set_fit_options(props, subject, LONG_FIT)
    assert ops.fit_outfit(wait=False) == {"FINISHED"}
    assert props.backend_state == "busy"
    assert poll_message(ops.fit_outfit).endswith("A job is running")
    assert poll_message(ops.redrape).endswith("A job is running")
    assert ops.cancel_job() == {"FINISHED"}
    assert poll_message(ops.cancel_job).endswith("The job is being cancelled")
    assert ops.wait_job(timeout=120) == {"CANCELLED"}
    assert props.job_state == P.CANCELLED and props.backend_state == "ready"
    assert len(pointwear_objects(bpy, "armature")) == 1  # nothing imported
    assert P.CANCELLED in capsys.readouterr().out
    # Resume it (from its checkpoint, with its own settings), and cancel that too.
    cancelled_id = props.job_id
    assert ops.fit_outfit(resume=True, wait=False) == {"FINISHED"}
    resumed = runtime.session().current_job
    assert resumed.job_id != cancelled_id and resumed.params == {"resume_job": cancelled_id}
    assert ops.cancel_job() == {"FINISHED"}
    assert ops.wait_job(timeout=120) == {"CANCELLED"}
    assert props.job_state == P.CANCELLED and props.job_id == resumed.job_id
    props.job_state = P.STATE_DONE  # as after a finished fit: nothing to resume
    with pytest.raises(RuntimeError) as info:
        ops.fit_outfit(resume=True, wait=False)
    assert "No cancelled or failed fit to resume" in str(info.value)

    # Re-drape on a new body shape: the same objects, new rest points.
    bpy.context.view_layer.objects.active = points[0]  # a child works too
    before = vertex_coords(points[0])
    props.redrape_betas = (2.5, -1.0, 0, 0, 0, 0, 0, 0, 0, 0)
    names = sorted(o.name for o in bpy.context.scene.objects)
    assert ops.redrape() == {"FINISHED"}
    after = vertex_coords(points[0])
    assert after.shape == before.shape
    assert np.abs(after - before).max() > 1e-3
    assert sorted(o.name for o in bpy.context.scene.objects) == names
    assert armature.get("pointwear_redrape")
    assert list(armature["pointwear_betas"])[:2] == pytest.approx([2.5, -1.0])
    assert props.job_kind == P.KIND_DRAPE and props.job_state == P.STATE_DONE

    # Load a motion onto the armature: keyed frames that differ.
    assert ops.load_motion(filepath=str(motion_file), up="Z") == {"FINISHED"}
    action = armature.animation_data.action
    assert action is not None and action.frame_range[1] - action.frame_range[0] >= 10
    scene = bpy.context.scene
    poses = []
    for frame in (int(action.frame_range[0]), int(action.frame_range[0]) + 5):
        scene.frame_set(frame)
        poses.append(np.array([list(pb.matrix_basis.to_quaternion()) for pb in armature.pose.bones]))
    assert np.abs(poses[0] - poses[1]).max() > 1e-3

    # Stop: the backend process is gone, buttons say why they are disabled.
    assert ops.stop_backend() == {"FINISHED"}
    assert props.backend_state == "not started"
    assert wait_gone(pid)
    assert poll_message(ops.fit_outfit).endswith("Start the backend first")
    assert poll_message(ops.redrape).endswith("Start the backend first")
    assert addon.timers.registered == []  # background mode: never a timer


def test_import_result_operator(addon, fit_result):
    bpy, props, ops = addon.bpy, addon.props, addon.bpy.ops.pointwear
    props.result_folder = str(fit_result.parent)  # not a result folder
    with pytest.raises(RuntimeError) as info:
        ops.import_result()
    assert "no outfit.npz" in str(info.value)
    props.result_folder = str(fit_result)
    props.import_camera = False
    assert ops.import_result() == {"FINISHED"}
    armature = pointwear_objects(bpy, "armature")[0]
    assert props.armature == armature
    assert not pointwear_objects(bpy, "camera")
    assert ops.load_motion.poll() is True  # an imported armature needs no backend
    assert poll_message(ops.redrape).endswith("Start the backend first")


def test_interactive_pump_finishes_a_job(addon, subject):
    """The UI path without a window: submit without waiting, then pump the session the way the
    timer does; the finished fit is imported by the pump."""
    bpy, props, ops, runtime = addon.bpy, addon.props, addon.bpy.ops.pointwear, addon.runtime
    P = addon.protocol
    # The UI's start: on a worker thread, followed by the pump timer's callback.
    assert runtime.start(bpy.context, blocking=False) is None
    assert props.backend_state == "starting"
    assert poll_message(ops.start_backend).endswith("The backend is starting")
    assert poll_message(ops.fit_outfit).endswith("The backend is starting")
    deadline = time.monotonic() + 180
    while props.backend_state == "starting":
        assert time.monotonic() < deadline
        # (the start thread may finish between the pump and the check: either interval is fine)
        assert runtime._pump_timer() in (runtime.BUSY_INTERVAL, runtime.IDLE_INTERVAL)
        time.sleep(0.1)
    assert props.backend_state == "ready", (props.backend_message, props.backend_hint)
    assert runtime._pump_timer() == runtime.IDLE_INTERVAL
    set_fit_options(props, subject, TINY_FIT)
    assert ops.fit_outfit(wait=False) == {"FINISHED"}
    assert runtime._pump_timer() == runtime.BUSY_INTERVAL
    job = runtime.session().current_job
    deadline = time.monotonic() + 300
    stages = set()
    while not job.handled:
        assert time.monotonic() < deadline, job
        runtime.pump()
        stages.add(props.job_stage)
        time.sleep(0.05)
    assert job.state == P.STATE_DONE and props.job_state == P.STATE_DONE
    assert len(stages) > 1, stages  # the stage text moved while it ran
    assert len(pointwear_objects(bpy, "armature")) == 1
    assert props.result_folder == job.folder
    assert ops.stop_backend() == {"FINISHED"}
    assert runtime._pump_timer() is None  # nothing to follow: the timer would unregister itself


def test_disable_stops_the_backend_and_leaves_nothing(addon):
    import addon_utils

    bpy, runtime = addon.bpy, addon.runtime
    assert bpy.ops.pointwear.start_backend() == {"FINISHED"}
    pid = runtime.session().pid
    assert pid and not gone(pid)
    # atexit cannot list its callbacks (and _ncallbacks() does not shrink): record unregisters.
    unregistered, orig_unregister = [], atexit.unregister
    atexit.unregister = lambda fn: (unregistered.append(fn), orig_unregister(fn))[1]
    try:
        addon_utils.disable(ADDON_MODULE, default_set=True)
    finally:
        atexit.unregister = orig_unregister
    assert runtime._atexit_stop in unregistered  # the exit hook registered on enable is gone
    assert wait_gone(pid)
    assert runtime._session is None
    assert handler_snapshot(bpy) == addon.handlers_before
    assert addon.timers.still_registered() == []
    assert not hasattr(bpy.types.Scene, "pointwear")
    addon_utils.enable(ADDON_MODULE, default_set=True)  # for the fixture's uninstall


def test_backend_stopped_at_interpreter_exit(extension_zip, tmp_path):
    """A script that starts the backend and just ends (no stop, no disable): the process exits
    (no timer holds it) and the backend goes with it (atexit)."""
    user = tmp_path / "user"
    user.mkdir()
    code = f"""
        import json, sys, bpy, addon_utils
        mod = {ADDON_MODULE!r}
        r = bpy.ops.extensions.package_install_files(
            filepath={str(extension_zip)!r}, repo={REPO_MODULE!r}, enable_on_install=True)
        prefs = bpy.context.preferences.addons[mod].preferences
        prefs.backend_python = {str(backend_python())!r}
        prefs.work_folder = {str(tmp_path / "work")!r}
        prefs.device = "CPU"
        assert bpy.ops.pointwear.start_backend() == {{"FINISHED"}}
        session = sys.modules[mod + ".operators.runtime"].session()
        print("RESULT " + json.dumps({{"pid": session.pid, "state": bpy.context.scene.pointwear.backend_state}}))
    """
    proc = run_python(code, env=blender_env(user), timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["state"] == "ready", out
    assert wait_gone(out["pid"]), "backend {} outlived Blender".format(out["pid"])


def test_modal_path_escape_cancels_and_a_fit_imports(addon, subject):
    """The UI path of a job operator, driven by hand (no window in background mode): TIMER
    events pump the session, Esc cancels, and a fit that ends is imported in the modal."""
    bpy, props, runtime = addon.bpy, addon.props, addon.runtime
    P = addon.protocol
    jobs = sys.modules[ADDON_MODULE + ".operators.jobs"]
    assert bpy.ops.pointwear.start_backend() == {"FINISHED"}

    class WindowManager:
        def __init__(self):
            self.removed = []

        def event_timer_remove(self, timer):
            self.removed.append(timer)

    class Workspace:
        def __init__(self):
            self.texts = []

        def status_text_set(self, text):
            self.texts.append(text)

    class Context:  # the real context, with a window manager and workspace that record
        def __init__(self):
            self.window_manager, self.workspace = WindowManager(), Workspace()

        def __getattr__(self, name):
            return getattr(bpy.context, name)

    class Event:
        def __init__(self, type, value="NOTHING", timer=None):
            self.type, self.value, self.timer = type, value, timer

    class FitModal(jobs.JobOperatorMixin):
        job_request = jobs.POINTWEAR_OT_fit_outfit.job_request

        def __init__(self):
            self.reports = []

        def report(self, kind, message):
            self.reports.append((set(kind), message))

    def run_modal(options, escape_after_progress):
        set_fit_options(props, subject, options)
        ctx, op, timer = Context(), FitModal(), object()
        job = op._submit(ctx)
        assert job is not None, op.reports
        job.tag["owner"] = "modal"  # as invoke() does
        op._job, op._timer = job, timer
        deadline = time.monotonic() + 300
        escaped = False
        while True:
            assert time.monotonic() < deadline, job
            if escape_after_progress and job.stage and not escaped:
                assert op.modal(ctx, Event("ESC", "PRESS")) == {"RUNNING_MODAL"}
                escaped = True
            runtime._pump_timer()  # the app timer never finishes a job a modal follows
            assert not job.handled
            result = op.modal(ctx, Event("TIMER", timer=timer))
            if result != {"PASS_THROUGH"}:
                break
            time.sleep(0.05)
        assert ctx.window_manager.removed == [timer] and "owner" not in job.tag
        assert any(t and "Esc: cancel" in t for t in ctx.workspace.texts)
        assert ctx.workspace.texts[-1] is None
        return job, result, op.reports

    job, result, reports = run_modal(LONG_FIT, escape_after_progress=True)
    assert result == {"CANCELLED"} and job.state == P.CANCELLED
    assert ({"INFO"}, "Cancelling the fit_outfit job") in reports
    assert reports[-1][0] == {"WARNING"} and P.CANCELLED in reports[-1][1]
    assert not pointwear_objects(bpy, "armature")

    job, result, reports = run_modal(TINY_FIT, escape_after_progress=False)
    assert result == {"FINISHED"} and job.state == P.STATE_DONE, reports
    assert reports[-1][0] == {"INFO"} and "imported" in reports[-1][1]
    assert len(pointwear_objects(bpy, "armature")) == 1
    assert props.job_state == P.STATE_DONE and props.result_folder == job.folder
    assert bpy.ops.pointwear.stop_backend() == {"FINISHED"}


def test_preview_image_is_one_datablock_removed_on_disable(addon, subject):
    import addon_utils

    bpy, runtime = addon.bpy, addon.runtime
    frames = sorted((subject / "frames").glob("*.png"))
    image = runtime.load_preview(str(frames[0]))
    assert image is not None and image.name == runtime.PREVIEW_IMAGE
    assert tuple(image.size) == (96, 96)
    pixels = np.array(image.pixels[:])
    image = runtime.load_preview(str(frames[1]))  # the same datablock, new pixels
    assert [im.name for im in bpy.data.images] == [runtime.PREVIEW_IMAGE]
    assert np.abs(np.array(image.pixels[:]) - pixels).max() > 0
    assert runtime.preview_icon_id() == 0  # no icons in background mode; drawing must not fail
    assert runtime.load_preview(str(subject / "no-such.png")) is None
    addon_utils.disable(ADDON_MODULE, default_set=True)
    assert runtime.PREVIEW_IMAGE not in bpy.data.images
    addon_utils.enable(ADDON_MODULE, default_set=True)  # for the fixture's uninstall
