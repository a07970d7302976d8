"""The job kinds `pointwear serve` runs: for each, a validator of the submit's `params` (on the
event loop: cheap checks only, errors name the field) and a runner (in the worker thread)
calling the backend's own functions, with outputs in the job's `out/` folder.

Adding a kind (as `fit_appearance` and `render` at the end of this file):

    def _validate_render(p: Params, ctx: SubmitContext) -> dict:
        return {"result": p.path("result", required=True, kind="dir"), "size": p.int("size", 512, 16, 4096)}

    def _run_render(job: JobContext) -> dict[str, Path]:
        ...                                   # job.params, job.out, job.progress, job.check_cancel
        return {"image": job.out / "render.png"}

    register(JobKind("render", _validate_render, _run_render, "render a fitted outfit"))

Nothing in params is ever executed: values are checked against types, ranges and choices, paths
must exist and be readable, and a drape may only be "parametric", "neural" or an existing `.pt`
file (loaded with torch.load(weights_only=True))."""
from __future__ import annotations

import math
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..link import protocol as P
from .jobs import JobCancelled, JobContext, JobKind, JobStore

_MISSING = object()
GENDERS = ("neutral", "male", "female")
MAX_BETAS = 300


class ParamError(Exception):
    """A bad submit parameter: answered with ERROR bad_params naming `field`."""

    def __init__(self, field: str, message: str, hint: str = "") -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.hint = field, message, hint


@dataclass
class SubmitContext:
    """What a validator may look at besides the params: the job store (e.g. for `resume_job`)."""
    store: JobStore


@dataclass
class Validated:
    """A validator's answer when it needs more than clean params: `out` reuses another job's
    result folder (resume), `resumed_from` names that job."""
    params: dict
    out: Path | None = None
    resumed_from: str | None = None
    memory: int = 0              # the kind's estimate of the job's peak memory (bytes)
    memory_field: str = ""       # the parameter that drives it


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    KINDS[kind.name] = kind
    return kind


def validate(kind: JobKind, params: dict, ctx: SubmitContext) -> Validated:
    """Run a kind's validator; unknown parameters are refused (a typo must not pass silently)."""
    p = Params(params)
    result = kind.validate(p, ctx)
    p.finish()
    result = result if isinstance(result, Validated) else Validated(dict(result))
    if kind.memory is not None:
        result.memory, result.memory_field = kind.memory(result.params)
    return result


class Params:
    """Typed access to a submit's params; every error names the parameter."""

    def __init__(self, raw: dict) -> None:
        self.raw, self.used = raw, set()

    def _get(self, name: str, default: Any) -> Any:
        self.used.add(name)
        value = self.raw.get(name, _MISSING)
        if value is None or value is _MISSING:
            return default
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ParamError(unknown[0], "unknown parameter", f"known parameters: {sorted(self.used)}")

    def required(self, name: str) -> None:
        if self.raw.get(name) is None:
            raise ParamError(name, "is required")

    def int(self, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self._get(name, default)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(name, f"must be an integer, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ParamError(name, f"must be within {lo}..{hi}, got {value}")
        return value

    def float(self, name: str, default: float | None, lo: float, hi: float) -> float | None:
        value = self._get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParamError(name, f"must be a number, got {_short(value)}")
        if not lo <= value <= hi:
            raise ParamError(name, f"must be within {lo:g}..{hi:g}, got {value:g}")
        return float(value)

    def bool(self, name: str, default: bool) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise ParamError(name, f"must be true or false, got {value!r}")
        return value

    def choice(self, name: str, default: str | None, choices: tuple | list) -> str | None:
        value = self._get(name, default)
        if value is None:
            return None
        if not isinstance(value, str) or value not in choices:
            raise ParamError(name, f"must be one of {list(choices)}, got {value!r}")
        return value

    def betas(self, name: str = "betas") -> list[float] | None:
        value = self._get(name, None)
        if value is None:
            return None
        numbers = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not numbers or len(value) > MAX_BETAS:
            raise ParamError(name, f"must be a list of at most {MAX_BETAS} finite numbers, got {_short(value)}")
        return [float(v) for v in value]

    def frames(self, name: str, default: list[int] | None) -> list[int] | None:
        """A list of frame numbers, or a string like "0,2,4-7"."""
        value = self._get(name, default)
        if value is None:
            return None
        try:   # the protocol's one frame-list parser: bounded before anything is expanded
            frames = P.parse_frames(value)
        except ValueError as exc:
            raise ParamError(name, f"{exc}; got {_short(value)}",
                             f'at most {P.MAX_FRAMES} frame numbers like "0,2,4-7"') from None
        if not frames:
            raise ParamError(name, f"must name at least one frame, got {_short(value)}")
        return frames

    def path(self, name: str, *, required: bool = False, default: str | None = None, kind: str = "any",
             suffixes: tuple[str, ...] = ()) -> str | None:
        """An absolute path that exists and is readable: `kind` "file", "dir" or "any"."""
        value = self._get(name, default)
        if value is None:
            if required:
                raise ParamError(name, "is required")
            return None
        return check_path(name, value, kind, suffixes)

    def model(self, name: str, default: str = "default") -> str:
        """A body model: "default" or the path of a user's SMPL file or folder."""
        value = self._get(name, default)
        if value == "default":
            return value
        return check_path(name, value, "any", ())


def check_path(name: str, value: Any, kind: str = "any", suffixes: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ParamError(name, f"must be a path (a non-empty string), got {_short(value)}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ParamError(name, f"must be an absolute path, got {value!r}",
                         "the server's working folder is not the client's: send absolute paths")
    try:
        mode = path.stat().st_mode
    except OSError:
        raise ParamError(name, f"does not exist: {path}") from None
    if kind == "file" and not stat.S_ISREG(mode):
        raise ParamError(name, f"is not a regular file: {path}",
                         "a pipe, socket or device would block the job: pass a file")
    if kind == "dir" and not stat.S_ISDIR(mode):
        raise ParamError(name, f"is not a folder: {path}")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ParamError(name, f"is neither a regular file nor a folder: {path}",
                         "a pipe, socket or device would block the job: pass a file")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise ParamError(name, f"is not readable: {path}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ParamError(name, f"must be a {' or '.join(suffixes)} file, got {path.name!r}")
    return str(path.resolve())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- body ---------------------------------------------------------------------------------------

def _validate_body(p: Params, ctx: SubmitContext) -> dict:
    return {"model": p.model("model"), "gender": p.choice("gender", "neutral", GENDERS), "betas": p.betas()}


def _run_body(job: JobContext) -> dict[str, Path]:
    from ..body import load_body
    from ..body.export import export_body
    prm = job.params
    body = load_body(prm["model"], gender=prm["gender"], device="cpu")
    job.check_cancel()
    return {"body": export_body(body, job.out / P.BODY_NPZ, prm["betas"])}


register(JobKind(P.KIND_BODY, _validate_body, _run_body, "body.npz (rest pose, SMPL space) for the add-on"))


# -- synth --------------------------------------------------------------------------------------

def _outfit(p: Params, name: str, default: str, allow_random: bool = True) -> str:
    """An outfit parameter: a legacy outfit, garments joined by '+', or (synth) "random"."""
    from ..garment.families import outfit_spec_error
    value = p._get(name, default)
    problem = outfit_spec_error(value, allow_random=allow_random)
    if problem:
        raise ParamError(name, problem)
    return value


def _validate_synth(p: Params, ctx: SubmitContext) -> dict:
    from ..synth.generate import SynthOptions
    from ..synth.motion import MOTIONS
    d = SynthOptions()
    return {"frames": p.int("frames", d.frames, 1, 10000), "size": p.int("size", d.size, 32, 4096),
            "outfit": _outfit(p, "outfit", d.outfit),
            "motion": p.choice("motion", d.motion, list(MOTIONS)), "seed": p.int("seed", d.seed, 0, 2**32 - 1),
            "betas": p.betas(), "body": p.model("body", d.body), "points": p.int("points", d.points, 16, 1_000_000),
            "sheet": p.bool("sheet", True)}


def _run_synth(job: JobContext) -> dict[str, Path]:
    import numpy as np

    from ..synth.generate import SynthOptions, generate_subject
    prm = job.params
    options = SynthOptions(frames=prm["frames"], size=prm["size"], outfit=prm["outfit"], motion=prm["motion"],
                           seed=prm["seed"], body=prm["body"], points=prm["points"],
                           betas=None if prm["betas"] is None else np.array(prm["betas"]))

    def progress(stage: str, i: int, n: int) -> None:
        job.check_cancel()
        job.progress(stage, i, n)

    # Rendered into a hidden folder, renamed when complete: a subject folder is there whole or not at all.
    names = P.RESULT_FILES[P.KIND_SYNTH]
    partial, final = job.out / f".{names['subject']}.partial", job.out / names["subject"]
    shutil.rmtree(partial, ignore_errors=True)
    generate_subject(partial, options, progress)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    files = {"subject": final}
    if prm["sheet"]:
        from ..data.subject import read_subject
        from ..viz import contact_sheet
        files["sheet"] = contact_sheet(read_subject(final), job.out / names["sheet"])
    return files


SYNTH_BASE_BYTES = 400 << 20    # measured peak RSS of synth (docs/reliability.md): ~385 MB
SYNTH_BYTES_PER_PIXEL = 1152     # + ~950 B per pixel of one frame (size 256 -> 768), 20 % margin


def _synth_memory(params: dict) -> tuple[int, str]:
    """Peak memory of a synth job: the renderer's buffers grow with size**2 (not with frames)."""
    return SYNTH_BASE_BYTES + SYNTH_BYTES_PER_PIXEL * params["size"] ** 2, "size"


register(JobKind(P.KIND_SYNTH, _validate_synth, _run_synth, "a synthetic subject with known clothing", _synth_memory))


# -- fit_outfit ---------------------------------------------------------------------------------

FIT_FILES = P.RESULT_FILES[P.KIND_FIT_OUTFIT]
FIT_PREVIEW_EVERY_S = 2.0


def check_drape(name: str, value: Any) -> str:
    """ "parametric", "neural" or an existing neural checkpoint (.pt) file."""
    if value in ("parametric", "neural"):
        return value
    if isinstance(value, str) and value.lower().endswith(".pt"):
        return check_path(name, value, "file", (".pt",))
    raise ParamError(name, f'must be "parametric", "neural" or the path of a .pt drape checkpoint, got {_short(value)}')


def _resume_base(p: Params, ctx: SubmitContext, kind: str) -> tuple[dict, Path | None, str | None]:
    """For `resume_job`: the earlier job's params (the defaults of this one), its out folder and id;
    ({}, None, None) for a fresh job. Refuses other kinds and jobs still running on that folder."""
    resume = p._get("resume_job", None)
    if resume is None:
        return {}, None, None
    prev = ctx.store.get(resume)
    if prev is None:
        raise ParamError("resume_job", f"no such job: {_short(resume)}", "status lists the jobs")
    if prev.kind != kind:
        raise ParamError("resume_job", f"job {resume} is a {prev.kind} job, not {kind}")
    if prev.state in P.ACTIVE_STATES or prev.out in ctx.store.active_outs():
        raise ParamError("resume_job", f"job {resume} (or another job on its folder) is still {prev.state}",
                         "cancel it first, or wait for it to end")
    return {k: v for k, v in prev.params.items() if k != "resume_job"}, prev.out, prev.job_id


def _subject_folder(p: Params, base: dict) -> str:
    subject = p.path("subject", required=True, default=base.get("subject"), kind="dir")
    if not (Path(subject) / "subject.json").is_file():
        raise ParamError("subject", f"not a subject folder (no subject.json): {subject}")
    return subject


def _validate_fit(p: Params, ctx: SubmitContext) -> Validated:
    from ..fit.outfit_fit import FitOptions
    d = FitOptions()
    base, out, resumed = _resume_base(p, ctx, P.KIND_FIT_OUTFIT)
    subject = _subject_folder(p, base)
    drape = check_drape("drape", p._get("drape", base.get("drape", d.drape)))
    template = p._get("template", base.get("template", d.template))
    if template is not None:
        template = _outfit(p, "template", template, allow_random=False)
    if template is not None and drape != "parametric":
        raise ParamError("template", "applies to the parametric drape only")
    params = {
        "subject": subject, "drape": drape, "template": template,
        "frames": p.frames("frames", base.get("frames", d.frames)),
        "codes": p.int("codes", base.get("codes", d.codes), 1, 64),
        "coarse_steps": p.int("coarse_steps", base.get("coarse_steps", d.coarse_steps), 0, 1_000_000),
        "fine_steps": p.int("fine_steps", base.get("fine_steps", d.fine_steps), 0, 1_000_000),
        "refine_steps": p.int("refine_steps", base.get("refine_steps", d.refine_steps), 0, 1_000_000),
        "seed": p.int("seed", base.get("seed", d.seed), 0, 2**32 - 1),
        "labels": p.choice("labels", base.get("labels", d.labels), ("auto", "off")),
        "resume_job": resumed,
    }
    return Validated(params, out=out, resumed_from=resumed)


def _run_fit(job: JobContext) -> dict[str, Path]:
    from ..data.subject import read_subject
    from ..fit.outfit_fit import FitCancelled, FitOptions, OutfitFitter
    prm = job.params
    options = FitOptions(drape=prm["drape"], template=prm["template"], frames=prm["frames"], codes=prm["codes"],
                         coarse_steps=prm["coarse_steps"], fine_steps=prm["fine_steps"],
                         refine_steps=prm["refine_steps"], seed=prm["seed"], device=job.device,
                         threads=job.threads or FitOptions.threads, labels=prm.get("labels", "auto"))
    if (job.out / P.CHECKPOINT_PT).exists():
        job.status(f"resuming from {job.out / P.CHECKPOINT_PT}")
    subject = read_subject(prm["subject"])
    job.check_cancel()
    fitter = OutfitFitter(subject, job.out, options, job.progress, job.should_stop, preview=job.preview,
                          preview_every_s=FIT_PREVIEW_EVERY_S, preview_points=job.preview_points)
    try:
        fitter.run()
    except FitCancelled as exc:
        raise JobCancelled(str(exc)) from exc
    return {name: job.out / f for name, f in FIT_FILES.items()}


register(JobKind(P.KIND_FIT_OUTFIT, _validate_fit, _run_fit, "fit an outfit to a subject's clothing masks"))


# -- drape --------------------------------------------------------------------------------------

def _validate_drape(p: Params, ctx: SubmitContext) -> dict:
    result = p.path("result", required=True, kind="dir")
    if not (Path(result) / P.OUTFIT_NPZ).is_file():
        raise ParamError("result", f"not a fit result folder (no {P.OUTFIT_NPZ}): {result}")
    return {"result": result, "betas": p.betas(), "motion": p.path("motion", kind="file", suffixes=(".npz",)),
            "up": p.choice("up", "z", ["y", "z"]),
            "checkpoint": p.path("checkpoint", kind="file", suffixes=(".pt",))}


def _run_drape(job: JobContext) -> dict[str, Path]:
    from ..drape.redrape import redrape
    prm = job.params
    out = redrape(prm["result"], job.out, betas=prm["betas"], motion=prm["motion"], up=prm["up"],
                  checkpoint=prm["checkpoint"])
    return {name: out / f for name, f in P.RESULT_FILES[P.KIND_DRAPE].items()}


register(JobKind(P.KIND_DRAPE, _validate_drape, _run_drape, "re-drape a fitted outfit on a new body and motion"))


# -- fit_appearance -----------------------------------------------------------------------------

APPEARANCE_FILES = P.RESULT_FILES[P.KIND_FIT_APPEARANCE]


def check_result_folder(name: str, value: Any, needs: tuple[str, ...]) -> str:
    """An existing folder holding the files `needs` (e.g. a fit result's outfit.npz, posed.npz)."""
    folder = check_path(name, value, "dir")
    missing = [f for f in needs if not (Path(folder) / f).is_file()]
    if missing:
        raise ParamError(name, f"not a finished result folder (no {', '.join(missing)}): {folder}")
    return folder


def _validate_fit_appearance(p: Params, ctx: SubmitContext) -> Validated:
    from ..appearance.fit import AppearanceOptions
    d = AppearanceOptions()
    base, out, resumed = _resume_base(p, ctx, P.KIND_FIT_APPEARANCE)
    subject = _subject_folder(p, base)
    outfit = p._get("outfit", base.get("outfit"))
    if outfit is None:
        raise ParamError("outfit", "is required", "the fit_outfit result folder of this subject")
    outfit = check_result_folder("outfit", outfit, (P.OUTFIT_NPZ, P.POSED_NPZ))
    minutes = p._get("minutes", base.get("minutes", d.minutes))
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                or not math.isfinite(minutes) or not 0 < minutes <= 100000):
        raise ParamError("minutes", f"must be a number of minutes > 0, got {_short(minutes)}")
    vgg = p._get("vgg", base.get("vgg"))
    params = {
        "subject": subject, "outfit": outfit,
        "epochs": p.int("epochs", base.get("epochs", d.epochs), 0, 1_000_000),
        "size": p.int("size", base.get("size", d.size), 32, 4096),
        "frames": p.frames("frames", base.get("frames", d.frames)),
        "minutes": None if minutes is None else float(minutes),
        "vgg": None if vgg is None else check_path("vgg", vgg, "file", (".pth", ".pt")),
        "seed": p.int("seed", base.get("seed", d.seed), 0, 2**32 - 1),
        "midpoints": p.bool("midpoints", base.get("midpoints", d.midpoints)),
        "normals": p.bool("normals", base.get("normals", d.normals)),
        "resume_job": resumed,
    }
    return Validated(params, out=out, resumed_from=resumed)


def _run_fit_appearance(job: JobContext) -> dict[str, Path]:
    from ..appearance.fit import AppearanceFitter, AppearanceOptions, FitCancelled
    from ..data.subject import read_subject
    prm = job.params
    options = AppearanceOptions(epochs=prm["epochs"], size=prm["size"], frames=prm["frames"], minutes=prm["minutes"],
                                vgg=prm["vgg"], seed=prm["seed"], device=job.device,
                                threads=job.threads or AppearanceOptions.threads,
                                midpoints=prm.get("midpoints", AppearanceOptions.midpoints),
                                normals=prm.get("normals", AppearanceOptions.normals))
    if (job.out / P.CHECKPOINT_PT).exists():
        job.status(f"resuming from {job.out / P.CHECKPOINT_PT}")
    subject = read_subject(prm["subject"])
    job.check_cancel()
    fitter = AppearanceFitter(subject, prm["outfit"], job.out, options, job.progress, job.should_stop,
                              preview=job.preview, preview_every_s=FIT_PREVIEW_EVERY_S)
    try:
        fitter.run()
    except FitCancelled as exc:
        raise JobCancelled(str(exc)) from exc
    return {name: job.out / f for name, f in APPEARANCE_FILES.items()}


# Measured peak RSS of fit-appearance (docs/reliability.md): 533 / 768 MB at 128 / 384 px with 4
# frames, 565 / 871 MB with 12: ~1.4 KB per training pixel plus ~0.09 KB per pixel and frame.
APPEARANCE_BASE_BYTES = 550 << 20
APPEARANCE_BYTES_PER_PIXEL = 1843            # +25 % margin
APPEARANCE_BYTES_PER_PIXEL_FRAME = 123       # +35 % margin
SUBJECT_JSON_MAX_BYTES = 1 << 20


def _appearance_memory(params: dict) -> tuple[int, str]:
    """Peak memory of a fit_appearance job from its training size and the subject's frame count
    (subject.json; a subject too odd to say is left to the job's own checks)."""
    import json

    from ..data.subject import SUBJECT_JSON
    path = Path(params["subject"]) / SUBJECT_JSON
    try:
        if path.stat().st_size > SUBJECT_JSON_MAX_BYTES:
            return 0, "subject"
        meta = json.loads(path.read_text(encoding="utf-8"))
        h, w = (int(v) for v in meta["image_size"])
        n = int(meta["frames"])
    except (OSError, ValueError, TypeError, KeyError):
        return 0, "subject"
    size = params["size"] or min(max(h, w), 512)
    pixels = round(h * size / max(h, w)) * round(w * size / max(h, w))
    return (APPEARANCE_BASE_BYTES + APPEARANCE_BYTES_PER_PIXEL * pixels
            + APPEARANCE_BYTES_PER_PIXEL_FRAME * pixels * n), "size"


register(JobKind(P.KIND_FIT_APPEARANCE, _validate_fit_appearance, _run_fit_appearance,
                 "fit neural point descriptors + a rendering U-Net to a subject's frames; bake colours",
                 _appearance_memory))


# -- export -------------------------------------------------------------------------------------

def _validate_export(p: Params, ctx: SubmitContext) -> dict:
    result = check_result_folder("result", p.path("result", required=True, kind="dir"), (P.OUTFIT_NPZ, P.BODY_NPZ))
    fmt = p.choice("format", "glb", list(P.EXPORT_FORMATS))
    motion = p.path("motion", kind="file", suffixes=(".npz",))
    if motion is not None and fmt != "glb":
        raise ParamError("motion", "a motion goes into glb files only", "format glb")
    return {"result": result, "format": fmt, "motion": motion, "up": p.choice("up", "auto", ["auto", "y", "z"])}


def _run_export(job: JobContext) -> dict[str, Path]:
    from ..mesh.export import export_result
    prm = job.params
    names = P.RESULT_FILES[P.KIND_EXPORT]
    files = export_result(prm["result"], prm["format"], job.out / names[prm["format"]], motion=prm["motion"],
                          up=prm["up"], warn=job.warn, progress=job.progress)
    by_name = {job.out / f: name for name, f in names.items()}
    return {by_name[f]: f for f in files}


register(JobKind(P.KIND_EXPORT, _validate_export, _run_export,
                 "export a result as a skinned, textured glTF binary (with a motion), OBJ + MTL + PNG or PLY points"))


# -- render -------------------------------------------------------------------------------------

def _validate_render(p: Params, ctx: SubmitContext) -> dict:
    app = p._get("app", None)
    if app is None:
        raise ParamError("app", "is required", "a fit_appearance result folder")
    app = check_result_folder("app", app, (P.APPEARANCE_PT,))
    outfit = p._get("outfit", None)
    outfit = app if outfit is None else check_result_folder("outfit", outfit, (P.OUTFIT_NPZ,))
    if not (Path(outfit) / P.OUTFIT_NPZ).is_file():
        raise ParamError("outfit", f"no {P.OUTFIT_NPZ} in {outfit}: pass the outfit result the appearance was fitted on")
    return {"app": app, "outfit": outfit, "betas": p.betas(),
            "motion": p.path("motion", required=True, kind="file", suffixes=(".npz",)),
            "up": p.choice("up", "z", ["y", "z"]),
            "camera": p.path("camera", required=True, kind="file", suffixes=(".npz",))}


def _run_render(job: JobContext) -> dict[str, Path]:
    from ..appearance.neural_render import render_sequence
    prm = job.params
    frames = job.out / P.RESULT_FILES[P.KIND_RENDER]["frames"]
    summary = render_sequence(prm["app"], frames, motion=prm["motion"], camera=prm["camera"], outfit_dir=prm["outfit"],
                              betas=prm["betas"], up=prm["up"], progress=job.progress, should_stop=job.should_stop,
                              device=job.device, threads=job.threads or 1)
    if summary[P.CANCELLED]:
        raise JobCancelled(f"render cancelled after {summary['frames']} of {summary['of']} frames")
    first = frames / summary["first"] if summary["first"] else None
    return {"frames": frames, "first": first, "render_json": job.out / P.RESULT_FILES[P.KIND_RENDER]["render_json"]}


register(JobKind(P.KIND_RENDER, _validate_render, _run_render,
                 "neural render of a fitted appearance on a motion, body shape and camera (RGBA PNGs)"))


# -- prepare ------------------------------------------------------------------------------------

PREPARE_FILES = P.RESULT_FILES[P.KIND_PREPARE]
PREPARE_PREVIEW_EVERY_S = 0.5     # at most two detection previews a second (the first always)


def _time_point(p: Params, name: str) -> str | None:
    """--start / --end as text: a frame number (12 or "12") or a time ("1.5s", "00:01.5"); the
    syntax is checked once, by PrepareOptions.check (decode.parse_time)."""
    value = p._get(name, None)
    if value is None or (isinstance(value, str) and len(value) <= 64):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ParamError(name, f'must be a frame number (12) or a time ("1.5s"), got {_short(value)}')


def _person(p: Params) -> str:
    """ "auto" or a track number 0..999 (an integer or its digits)."""
    value = p._get("person", "auto")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1000:
        return str(value)
    if value == "auto" or (isinstance(value, str) and value.isdigit() and int(value) < 1000):
        return value
    raise ParamError("person", f'must be "auto" or a track number 0..999, got {_short(value)}')


def _validate_prepare(p: Params, ctx: SubmitContext) -> dict:
    from ..errors import InputError
    from ..perception.options import MAX_FRAMES_LIMIT, PrepareOptions
    d = PrepareOptions()
    params = {
        "input": p.path("input", required=True),
        "every": p.int("every", d.every, 1, 10_000),
        "start": _time_point(p, "start"), "end": _time_point(p, "end"),
        "max_frames": p.int("max_frames", d.max_frames, 1, MAX_FRAMES_LIMIT),
        "size": p.int("size", d.size, 64, 8192),
        "person": _person(p),
        "focal": p.float("focal", d.focal, 1.0, 1e6),
        "masks": p.path("masks", kind="dir"),
        "sequence": p.choice("sequence", d.sequence, ("auto", "yes", "no")),
        "body": p.model("body", d.body),
        "gender": p.choice("gender", d.gender, GENDERS),
        "seed": p.int("seed", d.seed, 0, 2**32 - 1),
    }
    try:   # the CLI's own checks too, so the two can never disagree
        PrepareOptions(**params_options(params)).check()
    except InputError as exc:
        raise ParamError((exc.field or "params").lstrip("-").replace("-", "_"), exc.message,
                         exc.hint or "") from None
    return params


def params_options(params: dict) -> dict:
    """The PrepareOptions fields of a prepare job's checked params (all but `input`)."""
    return {k: v for k, v in params.items() if k != "input"}


def throttled_preview(job: JobContext, every_s: float):
    """job.preview, passed on at most once per `every_s` seconds (the first always)."""
    import time
    last = [-math.inf]

    def preview(rgb) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            job.preview(rgb)

    return preview


def _run_prepare(job: JobContext) -> dict[str, Path]:
    from ..perception.options import PrepareOptions
    from ..perception.prepare import Hooks, PrepareCancelled, prepare_subject
    options = PrepareOptions(**params_options(job.params), device=job.device)
    preview = throttled_preview(job, PREPARE_PREVIEW_EVERY_S)
    # prepare writes the subject atomically itself: "subject" appears whole or not at all.
    subject = job.out / PREPARE_FILES["subject"]
    try:
        prepare_subject(job.params["input"], subject, options,
                        Hooks(progress=job.progress, should_stop=job.should_stop, preview=preview))
    except PrepareCancelled as exc:
        raise JobCancelled(str(exc)) from exc
    return {name: job.out / rel for name, rel in PREPARE_FILES.items()}


register(JobKind(P.KIND_PREPARE, _validate_prepare, _run_prepare,
                 "a subject from a video, an image folder or one image (masks, labels, SMPL body, camera)"))


# -- reconstruct ----------------------------------------------------------------------------------

RECONSTRUCT_FILES = P.RESULT_FILES[P.KIND_RECONSTRUCT]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _validate_reconstruct(p: Params, ctx: SubmitContext) -> dict:
    from ..errors import InputError
    from ..recon.options import ReconOptions
    d = ReconOptions()
    params = {
        "image": p.path("image", required=True, kind="file", suffixes=IMAGE_SUFFIXES),
        "mask": p.path("mask", kind="file", suffixes=IMAGE_SUFFIXES),
        "focal": p.float("focal", None, 1.0, 1e6),
        "steps": p.int("steps", d.steps, 1, 10_000),
        "texture_size": p.int("texture_size", d.texture_size, 64, 4096),
        "fast": p.bool("fast", False),
        "refine": p.bool("refine", False),
        "body": p.model("body", "default"),
        "gender": p.choice("gender", "neutral", GENDERS),
    }
    if params["refine"] and not params["fast"]:
        raise ParamError("refine", "refining the learned result needs fast", "set fast: true, or leave refine out")
    try:   # the CLI's own checks too
        ReconOptions(steps=params["steps"], texture_size=params["texture_size"]).check()
    except InputError as exc:
        raise ParamError((exc.field or "params").lstrip("-").replace("-", "_"), exc.message, exc.hint or "") from None
    return params


def _run_reconstruct(job: JobContext) -> dict[str, Path]:
    from ..perception.prepare import Hooks, PrepareCancelled
    from ..recon.options import ReconOptions
    from ..recon.pipeline import reconstruct
    prm = job.params
    preview = throttled_preview(job, PREPARE_PREVIEW_EVERY_S)
    try:   # reconstruct writes its result folder atomically: all of it appears, or nothing
        reconstruct(prm["image"], job.out, mask=prm["mask"], focal=prm["focal"], body=prm["body"],
                    gender=prm["gender"], device=job.device,
                    options=ReconOptions(steps=prm["steps"], texture_size=prm["texture_size"],
                                         threads=job.threads or 1),
                    hooks=Hooks(progress=job.progress, should_stop=job.should_stop, preview=preview),
                    fast=prm["fast"], refine_fast=prm["refine"])
    except PrepareCancelled as exc:
        raise JobCancelled(str(exc)) from exc
    return {name: job.out / rel for name, rel in RECONSTRUCT_FILES.items()}


register(JobKind(P.KIND_RECONSTRUCT, _validate_reconstruct, _run_reconstruct,
                 "a textured garment mesh skinned to the SMPL body from one photo"))
# -- motion_import ------------------------------------------------------------------------------

def _validate_motion_import(p: Params, ctx: SubmitContext) -> dict:
    from ..data.retarget import RetargetOptions
    d = RetargetOptions()
    return {"source": p.path("source", required=True, kind="file", suffixes=(".bvh", ".npz")),
            "map": p.path("map", kind="file", suffixes=(".json",)),
            "fps": p.float("fps", d.fps, 1.0, 240.0), "up": p.choice("up", d.up, ("auto", "y", "z")),
            "iterations": p.int("iterations", d.iterations, 0, 1000),
            "body": p.model("body"), "gender": p.choice("gender", "neutral", GENDERS)}


def _run_motion_import(job: JobContext) -> dict[str, Path]:
    from ..body import load_body
    from ..data.retarget import RetargetOptions, retarget_bvh
    prm = job.params
    body = load_body(prm["body"], gender=prm["gender"], device="cpu")
    options = RetargetOptions(fps=prm["fps"], up=prm["up"], iterations=prm["iterations"])
    report = retarget_bvh(prm["source"], job.out / P.MOTION_NPZ, body, [prm["map"]] if prm["map"] else [],
                          options, progress=job.progress)
    for note in report["notes"]:
        job.status(note)
    return {name: job.out / f for name, f in P.RESULT_FILES[P.KIND_MOTION_IMPORT].items()}


register(JobKind(P.KIND_MOTION_IMPORT, _validate_motion_import, _run_motion_import,
                 "a BVH or an armature's sampled motion retargeted to SMPL's 24 joints (AMASS-style, Y-up)"))


# -- sliders / edit -------------------------------------------------------------------------------

MAX_SETS = 64


def _result_param(p: Params) -> str:
    result = p.path("result", required=True, kind="dir")
    if not (Path(result) / P.OUTFIT_NPZ).is_file():
        raise ParamError("result", f"not a fit result folder (no {P.OUTFIT_NPZ}): {result}")
    return result


def _validate_sliders(p: Params, ctx: SubmitContext) -> dict:
    return {"result": _result_param(p)}


def _run_sliders(job: JobContext) -> dict[str, Path]:
    from ..drape.sliders import slider_table
    slider_table(job.params["result"], job.out / P.SLIDERS_NPZ, progress=job.progress)
    return {name: job.out / f for name, f in P.RESULT_FILES[P.KIND_SLIDERS].items()}


def _validate_edit(p: Params, ctx: SubmitContext) -> dict:
    result = _result_param(p)
    sets = p._get("set", None)
    if not isinstance(sets, dict) or not 0 < len(sets) <= MAX_SETS:
        raise ParamError("set", f"must be an object of 1..{MAX_SETS} slider names and numbers, got {_short(sets)}")
    for name, value in sets.items():
        if not isinstance(name, str) or not 0 < len(name) <= 100:
            raise ParamError("set", f"slider names are short strings, got {_short(name)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParamError(f"set.{name}", f"must be a number, got {_short(value)}")
    return {"result": result, "set": {k: float(v) for k, v in sets.items()}}


def _run_edit(job: JobContext) -> dict[str, Path]:
    from ..drape.sliders import edit_result
    applied = edit_result(job.params["result"], job.out, job.params["set"])
    job.status("applied " + ", ".join(f"{k}={v:g}" for k, v in applied.items()))
    return {name: job.out / f for name, f in P.RESULT_FILES[P.KIND_EDIT].items() if (job.out / f).exists()}


register(JobKind(P.KIND_SLIDERS, _validate_sliders, _run_sliders,
                 "a result's slider table: rest points per garment-parameter value, for live re-draping"))
register(JobKind(P.KIND_EDIT, _validate_edit, _run_edit,
                 "a new result with garment parameters changed (sleeve=0.4, hem, looseness, ...)"))


def warm_up() -> None:
    """Import what the validators import, once at start: a first submit then answers in
    milliseconds (the add-on waits at most link.client.UI_TIMEOUT for a reply)."""
    from ..appearance.fit import AppearanceOptions  # noqa: F401
    from ..drape.parametric import TEMPLATES  # noqa: F401
    from ..fit.outfit_fit import FitOptions  # noqa: F401
    from ..garment.outfit import OUTFITS  # noqa: F401
    from ..perception.options import PrepareOptions  # noqa: F401
    from ..recon.options import ReconOptions  # noqa: F401
    from ..synth.generate import SynthOptions  # noqa: F401
    from ..synth.motion import MOTIONS  # noqa: F401
