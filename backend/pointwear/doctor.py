"""`pointwear doctor`: the state of everything the backend needs, each problem with a fix to try.

Runs in a possibly broken environment, so this module imports only the standard library at the
top and every check imports what it tests inside a guard: a missing torch is a failed check, not
a crash. Checks (in this order): Python, each required package (installed and importable), torch's
device (CUDA, driver), free disk and memory, the work folder (written and read back), the Blender
versions seen, the MediaPipe models inside the mediapipe wheel, the default body, the drape
weights and the pose prior loadable, and a smoke test (a 1-frame synthetic subject and a 2+2-step
outfit fit on the CPU; `--quick` skips it).

Each check is ``{"name", "status": ok|warn|fail, "detail", "fix"}``. Human output lists them;
``--json`` prints one JSON object (``ok``, ``version``, ``protocol``, ``checks``, ``seconds``) on
the last line of stdout (what the add-on's Diagnostics section reads). Exit code 1 when a check
failed, else 0.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata as md
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .link.gpu import nvidia_driver
from .link.protocol import PROTOCOL_VERSION, VERSION

OK, WARN, FAIL = "ok", "warn", "fail"
FIX_REINSTALL = ("Update Backend in Blender (Preferences > Add-ons > Pointwear), or in a developer "
                 "setup: pip install -r scripts/requirements.txt")
DEFAULT_WORK = "~/.cache/pointwear/work"   # the same default as `pointwear serve --work`


@dataclass
class DoctorOptions:
    """Thresholds of the checks."""
    min_free_disk_gb: float = 1.0        # below: fail (a fit writes checkpoints and results)
    low_free_disk_gb: float = 5.0        # below: warn
    min_free_memory_gb: float = 1.0
    low_free_memory_gb: float = 4.0
    smoke_frames: int = 1
    smoke_size: int = 48
    smoke_points: int = 512
    smoke_steps: int = 2                  # coarse and fine steps of the smoke fit
    slow_smoke_s: float = 60.0            # a smoke test slower than this: warn


# Distribution name -> module to import, where they differ.
IMPORT_NAMES = {"opencv-contrib-python": "cv2", "pillow": "PIL", "protobuf": "google.protobuf"}
# The required distributions when pointwear's own metadata is missing (a source checkout).
FALLBACK_REQUIREMENTS = ("torch", "numpy", "scipy", "smplx", "trimesh", "imageio", "tqdm",
                         "mediapipe", "opencv-contrib-python", "av")


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str, fix: str = "") -> Check:
        check = Check(name, status, detail, fix if status != OK else "")
        self.checks.append(check)
        return check

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)


def _guard(report: Report, name: str, fix: str):
    """A context manager: an exception inside becomes a failed check ``name`` with ``fix``."""

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except Exception as exc:  # the point of a doctor: report, never crash
            report.add(name, FAIL, f"{type(exc).__name__}: {exc}".strip()[:400], fix)

    return guard()


# -- checks ---------------------------------------------------------------------------------------

def check_python(report: Report) -> None:
    v = sys.version_info
    detail = f"Python {platform.python_version()} at {sys.executable}"
    if (v.major, v.minor) == (3, 11):
        report.add("python", OK, detail)
    else:
        report.add("python", FAIL, detail + "; the backend needs 3.11",
                   "Install Backend again with a Python 3.11 (Preferences > Add-ons > Pointwear > "
                   "Python for the Backend)")


def required_distributions() -> list[str]:
    """The distributions pointwear's metadata requires (names only)."""
    try:
        reqs = md.requires("pointwear") or []
    except md.PackageNotFoundError:
        return list(FALLBACK_REQUIREMENTS)
    names = []
    for req in reqs:
        if "extra ==" in req:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m:
            names.append(m.group(1))
    return names or list(FALLBACK_REQUIREMENTS)


def check_packages(report: Report) -> None:
    try:
        own = md.version("pointwear")
    except md.PackageNotFoundError:
        own = "source checkout (no metadata)"
    report.add("package pointwear", OK, f"pointwear {VERSION} (installed {own}), protocol "
               f"{PROTOCOL_VERSION}, at {Path(__file__).parent}")
    for dist in required_distributions():
        name = f"package {dist}"
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            report.add(name, FAIL, f"{dist} is not installed", FIX_REINSTALL)
            continue
        module = IMPORT_NAMES.get(dist.lower(), dist.lower().replace("-", "_"))
        try:
            with contextlib.redirect_stdout(sys.stderr):
                importlib.import_module(module)
        except Exception as exc:
            report.add(name, FAIL, f"{dist} {version} is installed but `import {module}` fails: "
                       f"{type(exc).__name__}: {exc}"[:400], FIX_REINSTALL)
            continue
        report.add(name, OK, f"{dist} {version}")


def check_device(report: Report) -> None:
    driver = nvidia_driver()
    with _guard(report, "device", FIX_REINSTALL):
        import torch
        built = torch.version.cuda
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            report.add("device", OK, f"CUDA {built} on {name} (driver {driver or 'unknown'}); "
                       f"torch {torch.__version__}")
        elif driver and not built:
            report.add("device", WARN, f"CPU: this torch ({torch.__version__}) has no CUDA but an "
                       f"NVIDIA driver {driver} is installed",
                       "Set PyTorch Build to CUDA (or Auto) and Update Backend for GPU speed")
        elif driver:
            report.add("device", WARN, f"CPU: torch {torch.__version__} (CUDA {built}) cannot use "
                       f"the GPU with driver {driver}",
                       "Update the NVIDIA driver, or set Device to CPU")
        else:
            report.add("device", OK, f"CPU ({torch.get_num_threads()} threads), torch "
                       f"{torch.__version__}; no NVIDIA driver found")


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(report: Report, work: Path, opt: DoctorOptions) -> None:
    with _guard(report, "disk", "Free some disk space"):
        where = _existing_parent(work)
        free = shutil.disk_usage(where).free / 2**30
        detail = f"{free:.1f} GB free at {where}"
        if free < opt.min_free_disk_gb:
            report.add("disk", FAIL, detail, "Free disk space or set the Work Folder to a bigger disk")
        elif free < opt.low_free_disk_gb:
            report.add("disk", WARN, detail, "Long fits write checkpoints: free some disk space")
        else:
            report.add("disk", OK, detail)


def memory_gb() -> tuple[float, float] | None:
    """(available, total) memory in GiB, or None when unknown."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()
                    if ":" in line)
        kb = lambda key: float(info[key].split()[0]) / 2**20  # noqa: E731
        return kb("MemAvailable"), kb("MemTotal")
    except (OSError, KeyError, ValueError):
        pass
    if sys.platform == "win32":
        import ctypes

        class MemoryStatus(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong),
                        ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong),
                        ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

        status = MemoryStatus()
        status.dwLength = ctypes.sizeof(MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return status.ullAvailPhys / 2**30, status.ullTotalPhys / 2**30
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return (os.sysconf("SC_AVPHYS_PAGES") * page / 2**30,
                os.sysconf("SC_PHYS_PAGES") * page / 2**30)
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(report: Report, opt: DoctorOptions) -> None:
    mem = memory_gb()
    if mem is None:
        report.add("memory", WARN, "could not read the free memory", "")
        return
    free, total = mem
    detail = f"{free:.1f} of {total:.1f} GB available"
    if free < opt.min_free_memory_gb:
        report.add("memory", FAIL, detail, "Close other programs before fitting")
    elif free < opt.low_free_memory_gb:
        report.add("memory", WARN, detail, "Fits of long videos may run out of memory: close "
                   "other programs")
    else:
        report.add("memory", OK, detail)


def check_work(report: Report, work: Path) -> None:
    fix = ("Set Preferences > Add-ons > Pointwear > Work Folder to a folder you can write "
           "(or `pointwear serve --work FOLDER`)")
    try:
        work.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pointwear-doctor-", dir=work)
        try:
            payload = os.urandom(64)
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            if Path(probe).read_bytes() != payload:
                raise OSError("a file written there read back differently")
        finally:
            with contextlib.suppress(OSError):
                os.remove(probe)
    except OSError as exc:
        report.add("work folder", FAIL, f"cannot write in {work}: {exc}", fix)
        return
    report.add("work folder", OK, f"{work} is writable")


def blender_folders() -> list[str]:
    """Blender versions with a user folder on this machine (``~/.config/blender/4.5`` ...)."""
    home = Path.home()
    roots = [home / ".config" / "blender",
             home / "Library" / "Application Support" / "Blender",
             Path(os.environ.get("APPDATA", home)) / "Blender Foundation" / "Blender"]
    found = set()
    for root in roots:
        with contextlib.suppress(OSError):
            found.update(p.name for p in root.iterdir() if re.fullmatch(r"\d+\.\d+", p.name))
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def check_blender(report: Report, blender: str) -> None:
    parts = []
    if blender:
        parts.append(f"asked by Blender {blender}")
    with contextlib.suppress(md.PackageNotFoundError):
        parts.append(f"bpy {md.version('bpy')} in this environment")
    folders = blender_folders()
    parts.append("Blender user folders: " + (", ".join(folders) if folders else "none found"))
    report.add("blender", OK, "; ".join(parts))


def check_mediapipe_models(report: Report) -> None:
    with _guard(report, "mediapipe models", FIX_REINSTALL):
        import mediapipe

        from .perception.pose import MEDIAPIPE_MODELS
        root = Path(mediapipe.__file__).parent
        missing = [m for m in MEDIAPIPE_MODELS if not (root / m).is_file()]
        if missing:
            report.add("mediapipe models", FAIL, f"mediapipe {mediapipe.__version__} at {root} "
                       f"lacks {', '.join(missing)} (never downloaded)",
                       "Install mediapipe==0.10.14 (its wheel bundles the models): " + FIX_REINSTALL)
        else:
            report.add("mediapipe models", OK, f"{len(MEDIAPIPE_MODELS)} models in mediapipe "
                       f"{mediapipe.__version__}")


def check_data(report: Report) -> None:
    fix = "The backend's data files are damaged: " + FIX_REINSTALL
    body = None
    with _guard(report, "default body", fix), contextlib.redirect_stdout(sys.stderr):
        from .body import load_body
        body = load_body("default", device="cpu")
        report.add("default body", OK, f"{body.num_vertices} vertices, {len(body.faces)} faces")
    with _guard(report, "drape weights", fix), contextlib.redirect_stdout(sys.stderr):
        from .drape.neural import DEFAULT_CHECKPOINT, load_neural_drape
        if body is None:
            raise RuntimeError("needs the default body, which did not load")
        load_neural_drape(None, body)
        report.add("drape weights", OK, f"{DEFAULT_CHECKPOINT.name} loads")
    with _guard(report, "pose prior", fix):
        from .perception.pose_prior import POSE_PRIOR_FILE, load_pose_prior
        prior = load_pose_prior()
        report.add("pose prior", OK, f"{POSE_PRIOR_FILE.name}: {len(prior)} arrays")


def check_smoke(report: Report, opt: DoctorOptions) -> None:
    fix = "Run Diagnostics again; if it still fails, Update Backend and report the message"
    with _guard(report, "smoke test", fix), contextlib.redirect_stdout(sys.stderr), \
            tempfile.TemporaryDirectory(prefix="pointwear-doctor-") as tmp:
        from .fit.outfit_fit import FitOptions, fit_outfit
        from .synth.generate import SynthOptions, generate_subject
        start = time.perf_counter()
        subject = generate_subject(Path(tmp) / "subject", SynthOptions(
            frames=opt.smoke_frames, size=opt.smoke_size, outfit="tshirt-shorts", seed=0,
            points=opt.smoke_points))
        result = fit_outfit(subject, Path(tmp) / "result", FitOptions(
            template="tshirt-shorts", codes=1, coarse_steps=opt.smoke_steps,
            fine_steps=opt.smoke_steps, device="cpu"))
        seconds = time.perf_counter() - start
        iou = result["metrics"]["train"]["iou"]
        detail = f"{opt.smoke_frames}-frame fit on the CPU in {seconds:.1f} s (mask IoU {iou:.2f})"
        if seconds > opt.slow_smoke_s:
            report.add("smoke test", WARN, detail, "This machine is slow or busy: fits will take long")
        else:
            report.add("smoke test", OK, detail)


def run(work: Path, blender: str = "", quick: bool = False,
        options: DoctorOptions | None = None) -> Report:
    """All checks, in order; never raises for a broken environment."""
    opt = options or DoctorOptions()
    report = Report()
    check_python(report)
    check_packages(report)
    check_device(report)
    check_disk(report, work, opt)
    check_memory(report, opt)
    check_work(report, work)
    check_blender(report, blender)
    check_mediapipe_models(report)
    check_data(report)
    if not quick:
        check_smoke(report, opt)
    return report


def _print_human(report: Report, seconds: float) -> None:
    marks = {OK: "ok  ", WARN: "warn", FAIL: "FAIL"}
    print(f"pointwear doctor {VERSION} (protocol {PROTOCOL_VERSION})")
    for c in report.checks:
        print(f"  [{marks[c.status]}] {c.name}: {c.detail}")
        if c.fix:
            print(f"         fix: {c.fix}")
    failed = sum(c.status == FAIL for c in report.checks)
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'} in {seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pointwear doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--work", default=DEFAULT_WORK, help="the work folder to check "
                        f"(default {DEFAULT_WORK}, as `pointwear serve`)")
    parser.add_argument("--blender", default="", help="the Blender version asking (the add-on's)")
    parser.add_argument("--quick", action="store_true", help="skip the smoke test")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        report = run(Path(args.work).expanduser(), args.blender, args.quick)
    except Exception:  # a bug in a check: still say something useful
        traceback.print_exc()
        return 2
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"ok": report.ok, "version": VERSION, "protocol": PROTOCOL_VERSION,
                          "python": sys.executable, "seconds": round(seconds, 2),
                          "checks": [asdict(c) for c in report.checks]}))
    else:
        _print_human(report, seconds)
    return 0 if report.ok else 1
