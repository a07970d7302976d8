"""One photo -> what reconstruction needs: the image, the clothing and person masks, the fitted SMPL
body and the camera. This is `pointwear prepare` run on the one image (its decoding, pose model,
body fit, clothing masks; a user's --mask is handed to prepare's --masks), plus the checks a single
photo needs: exactly one person, tall enough, a mask that fits the image and the person."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..body.model import BodyModel
from ..data.subject import Subject, read_subject
from ..errors import InputError
from ..perception.options import PrepareOptions
from ..perception.prepare import PERSON_DIR, PREPARE_DIR, Hooks, prepare_subject
from .options import MIN_PERSON_HEIGHT_PX

MIN_PERSON_SCORE = 0.5        # a second detection this confident counts as a second person
MIN_MASK_ON_PERSON = 0.6      # this share of a user's clothing mask must lie on the person


@dataclass
class Observation:
    """The photo as reconstruction sees it (H,W image; camera space = OpenCV, metres)."""

    image: np.ndarray          # (H,W,3) uint8
    mask: np.ndarray           # (H,W) bool clothing
    person: np.ndarray         # (H,W) bool person
    K: np.ndarray              # (3,3) float64
    betas: np.ndarray          # (S,) float32
    global_orient: np.ndarray  # (3,)
    body_pose: np.ndarray      # (69,)
    transl: np.ndarray         # (3,)
    image_file: str
    mask_file: str             # the user's mask, or the prepared one
    subject: Subject           # the prepared one-frame subject (posed.npz is written from it)

    @property
    def size(self) -> tuple[int, int]:
        return self.mask.shape

    def pose_tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(1,S) betas, (1,3) global_orient, (1,69) body_pose, (1,3) transl as float32 tensors."""
        return tuple(torch.as_tensor(a, dtype=torch.float32, device=device)[None]
                     for a in (self.betas, self.global_orient, self.body_pose, self.transl))

    def posed_body(self, body: BodyModel) -> torch.Tensor:
        """(1,V,3) the fitted body's vertices in camera space."""
        betas, go, bp, tr = self.pose_tensors(body.device)
        return body.forward(betas, go, bp, tr).vertices


def _check_mask_file(mask: Path, image: Path) -> None:
    """The user's mask must be readable and have the image's size (checked before any work)."""
    if not mask.is_file():
        raise InputError("mask file does not exist", file=mask, field="--mask")
    try:
        with Image.open(image) as im, Image.open(mask) as m:
            size, msize = im.size, m.size
    except (OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read: {exc}", file=mask, field="--mask") from None
    if size != msize:
        raise InputError(f"mask is {msize[0]}x{msize[1]} px but the image is {size[0]}x{size[1]}",
                         file=mask, field="--mask", hint="give the clothing mask of this image")


def _people(image: Path, options: PrepareOptions) -> tuple[list, float]:
    """The people the pose model sees in the image (visibility >= MIN_PERSON_SCORE) and the scale
    of the prepared frame (prepared px / image px)."""
    from ..perception.decode import open_input
    from ..perception.pose import PoseDetector
    from ..perception.prepare import MAX_PEOPLE
    info, frames = open_input(image, options)
    if info.kind != "image":
        raise InputError("reconstruct takes one image", file=image, field="IMAGE",
                         hint="use `pointwear prepare` for videos and image folders")
    frame = next(iter(frames))
    with PoseDetector(video=False) as det:
        people = det.detect(frame.rgb, max_people=MAX_PEOPLE)
    return [p for p in people if p.score >= MIN_PERSON_SCORE], info.scale


def _check_mask_on_person(mask: Path, person: np.ndarray) -> None:
    """A user's clothing mask must lie mostly on the person the pose model found."""
    from ..data.subject import image_to_mask_values
    with Image.open(mask) as m:
        values, full = image_to_mask_values(m, mask)
    on = (values > 0.5 * full).astype(np.uint8) * 255
    on = np.asarray(Image.fromarray(on).resize(person.shape[::-1], Image.NEAREST)) > 127
    share = (on & person).sum() / max(1, on.sum())
    if on.sum() == 0 or share < MIN_MASK_ON_PERSON:
        raise InputError(f"only {share:.0%} of the clothing mask lies on the person in the image",
                         file=mask, field="--mask", hint="give the clothing mask of this image")


def _check_photo(image: Path, options: PrepareOptions, mask: Path | None) -> None:
    """Exactly one person, tall enough, and a user's mask on them: checked before the body fit."""
    people, scale = _people(image, options)
    if not people:
        raise InputError("no person found in the image", file=image, field="IMAGE")
    if len(people) > 1:
        raise InputError(f"{len(people)} people in the image; reconstruct takes a photo of one person",
                         file=image, field="IMAGE", hint="crop the image to one person")
    height = people[0].height_px / scale
    if height < MIN_PERSON_HEIGHT_PX:
        raise InputError(f"the person is {height:.0f} px tall, under {MIN_PERSON_HEIGHT_PX} px",
                         file=image, field="IMAGE", hint="use a larger or closer photo")
    if mask is not None:
        _check_mask_on_person(mask, people[0].mask > 0.5)


def perceive_image(image: str | Path, subject_dir: Path, *, mask: str | Path | None = None,
                   focal: float | None = None, body: str = "default", gender: str = "neutral",
                   device: str = "auto", hooks: Hooks | None = None) -> Observation:
    """Run prepare on `image` into `subject_dir` (which must not exist) and read it back.

    Raises InputError naming the file for: no person, several people, a person under
    MIN_PERSON_HEIGHT_PX px tall, a mask of another size or one that misses the person."""
    image = Path(image).expanduser().absolute()
    if not image.is_file():
        raise InputError("does not exist", file=image, field="IMAGE")
    options = PrepareOptions(focal=focal, sequence="no", body=body, gender=gender, device=device).check()
    masks_dir = None
    if mask is not None:
        mask = Path(mask).expanduser().absolute()
        _check_mask_file(mask, image)
        masks_dir = subject_dir.parent / f".{subject_dir.name}.masks"
        masks_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mask, masks_dir / f"{image.stem}{mask.suffix.lower()}")
        options.masks = str(masks_dir)
    try:
        _check_photo(image, options, mask)
        prepare_subject(image, subject_dir, options, hooks)
    finally:
        if masks_dir is not None:
            shutil.rmtree(masks_dir, ignore_errors=True)
    return observation_from_subject(subject_dir, image_file=str(image),
                                    mask_file=str(mask) if mask is not None else None)


def observation_from_subject(subject_dir: Path, frame: int = 0, image_file: str | None = None,
                             mask_file: str | None = None, person: np.ndarray | None = None) -> Observation:
    """An Observation of one frame of a subject folder (prepare's, or a synthetic one with its
    own person mask given). Raises InputError when the clothing mask misses the person."""
    subject = read_subject(subject_dir)
    if person is None:
        person = np.asarray(Image.open(subject_dir / PREPARE_DIR / PERSON_DIR / f"{frame:06d}.png")) > 127
    cloth = subject.mask(frame)
    mask_file = mask_file or str(subject_dir / "masks" / f"{frame:06d}.png")
    on_person = (cloth & person).sum() / max(1, cloth.sum())
    if cloth.sum() == 0 or on_person < MIN_MASK_ON_PERSON:
        raise InputError(f"only {on_person:.0%} of the clothing mask lies on the person in the image",
                         file=mask_file, field="mask", hint="the mask must be this image's clothing mask")
    smpl = subject.smpl
    return Observation(image=subject.frame(frame), mask=cloth, person=person,
                       K=subject.K[frame].astype(np.float64), betas=smpl.betas,
                       global_orient=smpl.global_orient[frame], body_pose=smpl.body_pose[frame],
                       transl=smpl.transl[frame], image_file=image_file or str(subject_dir / "frames"),
                       mask_file=mask_file, subject=subject)
