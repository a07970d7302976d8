"""`pointwear prepare`: real footage -> a subject folder.

    decode -> detect people -> pick one track -> drop unusable frames -> fit body + camera
           -> clothing masks and labels (or the user's --masks) -> write the subject atomically
           -> SUBJECT/prepare/ (report.json, contact_sheet.png)

Frames are staged on disk beside the output while they are decoded, so a long video never has
to fit in memory; the subject appears under its final name only when it is complete.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import InputError
from ..fileio import atomic_path
from . import types as T
from .options import MIN_PERSON_HEIGHT_PX, PrepareOptions, default_focal_px

log = logging.getLogger(__name__)

PREPARE_DIR = "prepare"          # SUBJECT/prepare/: what prepare saw and decided
REPORT_JSON = "report.json"
SHEET_PNG = "contact_sheet.png"
PERSON_DIR = "person"            # prepare/person/000000.png: the person mask of each subject frame
LANDMARKS_NPZ = "landmarks.npz"  # kept frames' landmarks (N,33,4) and world (N,33,3)
MIN_SCORE = 0.5                  # a frame whose person's mean limb visibility is lower is dropped
BLUR_RATIO = 0.35                # sharpness below this share of the clip's median = motion blur
BLUR_MIN_FRAMES = 5              # the blur test needs this many frames to know the median
MAX_PEOPLE = 3                   # people looked for per frame
PREVIEW_EVERY = 1                # an overlay preview every N frames (server jobs)


class PrepareCancelled(Exception):
    """should_stop() said stop: nothing was written under the output name."""


@dataclass
class Hooks:
    """How a caller hears of the work: progress(stage, i, n), should_stop(), preview(rgb)."""
    progress: T.Progress | None = None
    should_stop: Callable[[], bool] | None = None
    preview: Callable[[np.ndarray], object] | None = None

    def step(self, stage: str, i: int, n: int) -> None:
        if self.should_stop is not None and self.should_stop():
            raise PrepareCancelled(f"prepare cancelled during {stage}")
        if self.progress is not None:
            self.progress(stage, i, n)


@dataclass
class _Seen:
    """What was kept of one decoded frame while the input streams by."""
    index: int
    time: float
    name: str
    people: list[T.PersonObs]
    sharpness: float = 0.0
    has_alpha: bool = False
    staged: str = ""
    drop: str | None = None
    detail: str = ""
    extra: dict = field(default_factory=dict)


def prepare_subject(source: str | Path, out: str | Path, options: PrepareOptions | None = None,
                    hooks: Hooks | None = None) -> dict:
    """Run the whole pipeline; returns the report (also in OUT/prepare/report.json)."""
    from .decode import open_input
    options = options or PrepareOptions()
    hooks = hooks or Hooks()
    source, out = Path(source).expanduser().resolve(), Path(out).expanduser().resolve()
    _check_out(out, source)
    t0 = time.perf_counter()
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    stage_dir = partial / ".staged"
    stage_dir.mkdir(parents=True)
    try:
        info, frames = open_input(source, options)
        user_masks = _user_masks(options.masks, info) if options.masks else None
        seen = _detect(frames, info, stage_dir, hooks)
        t_detect = time.perf_counter()
        chosen, warnings = _choose_person(seen, options, info)
        for w in warnings:
            log.warning(w)
        _drop_frames(seen, chosen, info)
        kept = [k for k, s in enumerate(seen) if s.drop is None]
        if not kept:
            raise InputError(_no_frames_message(seen), file=source, field="frames",
                             hint="check report.json reasons; a person must be seen whole, "
                                  f"at least {MIN_PERSON_HEIGHT_PX} px tall")
        if user_masks is not None:  # every mask is found before the body fit: errors come early
            for k in kept:
                user_masks.path_for(seen[k].index, seen[k].name)
        focal, focal_from = _focal(options, info)
        people = [chosen[k] for k in kept]
        person_masks = [_person_mask(chosen[k], seen[k]) for k in kept]
        fit = _fit_body(people, [seen[k] for k in kept], person_masks, info, focal, focal_from,
                        options, hooks)
        t_fit = time.perf_counter()
        masks, labels, clothing_conf = _clothing([seen[k] for k in kept], people, person_masks,
                                                 stage_dir, user_masks, hooks)
        t_cloth = time.perf_counter()
        report = _report(source, info, options, seen, kept, chosen, fit, focal, focal_from,
                         clothing_conf, warnings, user_masks is not None,
                         {"detect": t_detect - t0, "body_fit": t_fit - t_detect,
                          "clothing": t_cloth - t_fit})
        _write(partial, out, info, options, seen, kept, chosen, fit, masks, labels, person_masks,
               report, hooks)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    _save_json(out / PREPARE_DIR / REPORT_JSON, report)
    return report


# -- stages --------------------------------------------------------------------------------------

def _check_out(out: Path, source: Path) -> None:
    if out == source or (source.is_dir() and source in out.parents):
        raise InputError("the output folder must not be the input or inside an input image folder",
                         file=out, field="--out")
    if out.exists():
        if not out.is_dir():
            raise InputError("exists and is not a folder", file=out, field="--out")
        entries = {p.name for p in out.iterdir() if not p.name.startswith(".")}
        if entries and "subject.json" not in entries:
            raise InputError("folder is not empty and is not a subject folder", file=out,
                             field="--out", hint="write the subject into a new or empty folder")


def _detect(frames, info: T.InputInfo, stage_dir: Path, hooks: Hooks) -> list[_Seen]:
    """Decode, stage and run the pose model on every selected frame."""
    from .pose import PoseDetector
    seen: list[_Seen] = []
    total = info.selected or 0
    with PoseDetector(video=info.kind == "video") as detector:   # tracking graphs for a video
        for frame in frames:
            n = max(total, len(seen) + 1)
            hooks.step("detect", len(seen), n)
            people = detector.detect(frame.rgb, max_people=MAX_PEOPLE)
            staged = stage_dir / f"{len(seen):06d}.png"
            rgba = frame.rgb if frame.alpha is None else np.dstack([frame.rgb, frame.alpha])
            Image.fromarray(rgba).save(staged, compress_level=1)
            s = _Seen(frame.index, frame.time, frame.name, people, staged=str(staged),
                      has_alpha=frame.alpha is not None)
            s.sharpness = _sharpness(frame.rgb, people[0] if people else None)
            seen.append(s)
            if hooks.preview is not None and len(seen) % PREVIEW_EVERY == 0:
                from .overlay import detection_overlay
                hooks.preview(detection_overlay(frame.rgb, people))
    hooks.step("detect", len(seen), len(seen))
    if not seen:
        raise InputError("no frames selected (check --start, --end, --every)",
                         file=info.source, field="frames")
    return seen


def _sharpness(rgb: np.ndarray, person: T.PersonObs | None) -> float:
    """Variance of the Laplacian inside the person's box (grey, at most 512 px high)."""
    import cv2
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if person is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in person.bbox)
        h, w = grey.shape
        x0, x1, y0, y1 = max(0, x0), min(w, x1), max(0, y0), min(h, y1)
        if x1 - x0 > 8 and y1 - y0 > 8:
            grey = grey[y0:y1, x0:x1]
    step = max(1, grey.shape[0] // 512)
    return float(cv2.Laplacian(grey[::step, ::step], cv2.CV_32F).var())


def _choose_person(seen: list[_Seen], options: PrepareOptions, info: T.InputInfo
                   ) -> tuple[list[T.PersonObs | None], list[str]]:
    from .track import select_track
    person: str | int = options.person
    if isinstance(person, str) and person != "auto":
        try:
            person = int(person)
        except ValueError:
            raise InputError(f'must be "auto" or a track number, got {person!r}', field="--person")
    return select_track([s.people for s in seen], person, info.size)


def _drop_frames(seen: list[_Seen], chosen: list[T.PersonObs | None], info: T.InputInfo) -> None:
    """Mark frames with no usable person; motion blur is judged against the clip's own median."""
    sharp = [s.sharpness for s, c in zip(seen, chosen) if c is not None]
    median = float(np.median(sharp)) if len(sharp) >= BLUR_MIN_FRAMES else 0.0
    for s, c in zip(seen, chosen):
        if c is None:
            s.drop, s.detail = T.DROP_NO_PERSON, ("no person found" if not s.people
                                                 else "the chosen person is not in this frame")
        elif c.height_px < MIN_PERSON_HEIGHT_PX:
            s.drop, s.detail = T.DROP_TOO_SMALL, (f"person is {c.height_px:.0f} px tall, "
                                                 f"under {MIN_PERSON_HEIGHT_PX} px")
        elif c.score < MIN_SCORE:
            s.drop, s.detail = T.DROP_LOW_CONFIDENCE, (f"landmark visibility {c.score:.2f} "
                                                      f"< {MIN_SCORE}")
        elif median > 0 and s.sharpness < BLUR_RATIO * median:
            s.drop, s.detail = T.DROP_BLUR, (f"sharpness {s.sharpness:.0f} < {BLUR_RATIO:.0%} "
                                            f"of the clip's median {median:.0f}")


def _no_frames_message(seen: list[_Seen]) -> str:
    reasons: dict[str, int] = {}
    for s in seen:
        reasons[s.drop or "?"] = reasons.get(s.drop or "?", 0) + 1
    summary = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    if all(s.drop == T.DROP_NO_PERSON for s in seen):
        return f"no person found in any of the {len(seen)} frames"
    return f"no usable frame among {len(seen)}: {summary}"


def _focal(options: PrepareOptions, info: T.InputInfo) -> tuple[float, str]:
    if options.focal is not None:
        if not (np.isfinite(options.focal) and options.focal > 0):
            raise InputError(f"must be a positive number of pixels, got {options.focal}",
                             field="--focal")
        return float(options.focal), "--focal"
    if info.focal_px is not None:
        return float(info.focal_px), "exif"
    return default_focal_px(max(info.size)), "default"


def _fit_body(people: list[T.PersonObs], seen: list[_Seen], person_masks: list[np.ndarray],
              info: T.InputInfo, focal: float, focal_from: str, options: PrepareOptions,
              hooks: Hooks):
    from ..body import load_body
    from ..device import pick_device
    from .body_fit import FitCancelled, face_hints, fit_body
    device = pick_device(options.device)
    body = load_body(options.body, gender=options.gender, device=device)
    landmarks = np.stack([p.landmarks for p in people]).astype(np.float32)
    world = np.stack([p.world for p in people]).astype(np.float32)
    times = np.array([s.time for s in seen], dtype=np.float64)
    clip = is_sequence(info, [s.name for s in seen], options.sequence)
    # A face seen on the person's head says they face the camera (MediaPipe labels a person seen
    # from behind as if facing it); frames are read back from the stage one at a time.
    facing = face_hints(_Lazy([s.staged for s in seen], _read_rgb), landmarks)
    try:
        return fit_body(body, landmarks, world, person_masks, info.size, focal, facing=facing,
                        refine_focal=(focal_from == "default" and clip), temporal=clip,
                        times=times if clip else None, progress=hooks.progress,
                        should_stop=hooks.should_stop, device=device)
    except FitCancelled as exc:
        raise PrepareCancelled(str(exc)) from exc


def is_sequence(info: T.InputInfo, names: list[str], sequence: str = "auto") -> bool:
    """Are these frames one continuous shot (temporal smoothing, focal refinement)? A video is;
    an image folder is when its file names end in consecutive numbers (frame_0001.png,
    frame_0002.png, ... as extracted from a clip); one image is not. `sequence` "yes"/"no" decide."""
    if sequence != "auto":
        return sequence == "yes"
    if info.kind != "images" or len(names) < 2:
        return info.kind == "video"
    numbers = []
    for name in names:
        m = re.search(r"(\d+)$", Path(name).stem)
        if m is None:
            return False
        numbers.append(int(m.group(1)))
    steps = np.diff(numbers)
    return bool((steps > 0).all() and steps.max() <= 2 * steps.min())


def _person_mask(person: T.PersonObs, s: _Seen) -> np.ndarray:
    """The chosen person's mask; an image's own alpha wins where it says something."""
    mask = person.mask > 0.5
    if s.has_alpha:
        alpha = np.asarray(Image.open(s.staged))[..., 3]
        if 0.01 < (alpha > 127).mean() < 0.99:   # an all-opaque alpha says nothing
            mask = alpha > 127
    return mask


def _clothing(seen: list[_Seen], people: list[T.PersonObs], person_masks: list[np.ndarray],
              stage_dir: Path, user_masks, hooks: Hooks):
    """Clothing masks and labels per kept frame, staged as PNGs; user masks override ours."""
    from .clothing import clothing_mask
    masks, labels, conf = [], [], []
    for k, (s, p, person) in enumerate(zip(seen, people, person_masks)):
        hooks.step("clothing", k, len(seen))
        if user_masks is not None:
            m = user_masks.load(s.index, s.name)
            lab = None
            c = 1.0
        else:
            rgb = np.asarray(Image.open(s.staged))[..., :3]
            result = clothing_mask(rgb, person, p.landmarks)
            m, lab, c = result.mask, result.labels, float(result.confidence)
        mp = stage_dir / f"mask_{k:06d}.png"
        Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(mp, compress_level=1)
        masks.append(str(mp))
        if lab is not None:
            lp = stage_dir / f"labels_{k:06d}.png"
            Image.fromarray(lab.astype(np.uint8)).save(lp, compress_level=1)
            labels.append(str(lp))
        conf.append(c)
    hooks.step("clothing", len(seen), len(seen))
    return masks, (labels if len(labels) == len(seen) else None), conf


def _user_masks(folder: str, info: T.InputInfo):
    from .masks import user_mask_loader
    return user_mask_loader(Path(folder).expanduser(), info)


# -- output --------------------------------------------------------------------------------------

class _Lazy:
    """A sequence that reads staged PNGs one at a time (write_subject streams them)."""

    def __init__(self, paths: list[str], read: Callable[[str], np.ndarray]) -> None:
        self.paths, self.read = paths, read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(self.paths[i])


def _read_rgb(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))[..., :3]


def _read_grey(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def _write(partial: Path, out: Path, info: T.InputInfo, options: PrepareOptions,
           seen: list[_Seen], kept: list[int], chosen, fit, masks, labels, person_masks,
           report, hooks) -> None:
    from ..data.subject import write_subject
    from ..fileio import save_npz
    from .overlay import contact_sheet
    hooks.step("write", 0, 3)
    frames = _Lazy([seen[k].staged for k in kept], _read_rgb)
    meta = {"body": options.body, "gender": options.gender, "fps": float(info.fps),
            "source": info.source, "frame_ids": [int(seen[k].index) for k in kept],
            "prepare": {"kind": info.kind, "focal": report["camera"]["focal"],
                        "focal_from": report["camera"]["focal_from"]}}
    write_subject(partial, frames=frames, masks=_Lazy(masks, _read_grey), smpl=fit.smpl, K=fit.K,
                  meta=meta, labels=None if labels is None else _Lazy(labels, _read_grey),
                  label_names=None if labels is None else T.LABEL_NAMES)
    hooks.step("write", 1, 3)
    pdir = partial / PREPARE_DIR
    pdir.mkdir(exist_ok=True)
    save_npz(pdir / LANDMARKS_NPZ,
             landmarks=np.stack([chosen[k].landmarks for k in kept]).astype(np.float32),
             world=np.stack([chosen[k].world for k in kept]).astype(np.float32),
             joints2d=np.asarray(fit.joints2d, dtype=np.float32),
             frame_ids=np.array([seen[k].index for k in kept], dtype=np.int64))
    (pdir / PERSON_DIR).mkdir(exist_ok=True)
    for j, m in enumerate(person_masks):
        with atomic_path(pdir / PERSON_DIR / f"{j:06d}.png") as tmp:
            Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(tmp, format="PNG")
    contact_sheet(partial, fit, pdir / SHEET_PNG)
    _save_json(pdir / REPORT_JSON, report)
    shutil.rmtree(partial / ".staged", ignore_errors=True)
    hooks.step("write", 2, 3)
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    hooks.step("write", 3, 3)


def _report(source: Path, info: T.InputInfo, options: PrepareOptions, seen: list[_Seen],
            kept: list[int], chosen, fit, focal: float, focal_from: str, clothing_conf,
            warnings: list[str], user_masks: bool, seconds: dict) -> dict:
    kept_pos = {k: j for j, k in enumerate(kept)}
    frames = []
    for k, s in enumerate(seen):
        c = chosen[k]
        row = {"input_frame": int(s.index), "time": round(float(s.time), 4), "name": s.name,
               "people": len(s.people), "sharpness": round(s.sharpness, 1)}
        if c is not None:
            row.update(person_height_px=round(c.height_px, 1), person_score=round(c.score, 3))
        if s.drop is None:
            j = kept_pos[k]
            row.update(kept=True, subject_frame=j,
                       confidence=round(float(fit.confidence[j]), 3),
                       joint_error_px=round(float(fit.joint_error_px[j]), 2),
                       clothing_confidence=round(float(clothing_conf[j]), 3))
        else:
            row.update(kept=False, reason=s.drop, detail=s.detail)
        frames.append(row)
    return {
        "version": 1, "source": str(source), "kind": info.kind,
        "input": {"fps": info.fps, "size": list(info.size), "original_size": list(info.original_size),
                  "scale": info.scale, "rotation": info.rotation, "frame_count": info.frame_count,
                  "notes": list(info.notes)},
        "options": {k: v for k, v in asdict(options).items()},
        "camera": {"focal": round(float(fit.focal), 3), "focal_initial": round(focal, 3),
                   "focal_from": focal_from},
        "frames_seen": len(seen), "frames_kept": len(kept),
        "dropped": [{"input_frame": int(s.index), "name": s.name, "reason": s.drop,
                     "detail": s.detail} for s in seen if s.drop is not None],
        "warnings": list(warnings), "masks": "user" if user_masks else "pointwear",
        "betas": [round(float(b), 4) for b in fit.smpl.betas],
        "frames": frames,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def _save_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
