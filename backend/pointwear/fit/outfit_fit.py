"""Fitting an outfit code to clothing masks, the Point-Based Clothing way done right: several
random codes optimised in parallel (coarse), their mean or their best code (by held-out score) refined (fine), the best kept
by a held-out-frame score; losses are distance-transform 2D Chamfer on the visible points (both
directions) plus soft coverage and a code prior; then an optional regularised free-form
refinement of per-point offsets. Checkpointed, resumable, cancellable, with progress."""
from __future__ import annotations

import contextlib
import itertools
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..body import BodyModel, load_body, skin_frames
from ..data.subject import Subject, read_subject
from ..device import DeviceError, device_error, pick_device, preload_optimizer_imports, release_memory, scaled
from ..drape.base import DrapeModel, DrapeOutput
from ..errors import InputError
from ..garment.families import CUT_PARAMS, FAMILIES, outfit_families, outfit_name, upgrade_code
from ..link import protocol as P
from ..link.protocol import CHECKPOINT_PT
from ..render.rasterizer import project
from .frames import FrameSet, load_frames, reduced_size
from .losses import PAPER_SCALE, mask_losses
from .outputs import _overlay, write_outputs
from .selection import (PLAIN_TOPS, UNION, CandidateSpec, assign_labels, hidden_top, join_winners, label_groups,
                        labelled_candidates, replace_family, unlabelled_candidates)
from .state import (  # noqa: F401 - re-exported: callers import them from here
    Best, Candidate, FitCancelled, FitOptions, FitState, Preview, Progress, mask_group, split_frames)
from .visibility import visible_points

CUT_CHUNK = 8     # codes per loss evaluation of the cut search (bounds its memory at 512 px)


def slerp_mean(codes: torch.Tensor) -> torch.Tensor:
    """Spherical mean of codes (directions averaged on the sphere, rescaled to their mean norm),
    as the paper's fine stage starts from."""
    norms = codes.norm(dim=1, keepdim=True).clamp_min(1e-8)
    direction = (codes / norms).mean(0)
    return direction / direction.norm().clamp_min(1e-8) * norms.mean()


class OutfitFitter:
    def __init__(self, subject: Subject, out: Path, options: FitOptions,
                 progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                 body: BodyModel | None = None, preview: Preview | None = None,
                 preview_every_s: float = 2.0, preview_points: Callable[[np.ndarray], None] | None = None) -> None:
        self.subject, self.out, self.options = subject, Path(out), options
        # `preview`: called with the current fit drawn over the first training frame, after the
        # first step and then at most every `preview_every_s` seconds (the server's live view).
        self.preview, self.preview_every_s, self._preview_at = preview, preview_every_s, None
        # `preview_points`: called with the same fit's (P, 3) rest-pose points (the live 3D view).
        self.preview_points = preview_points
        self.progress = progress or (lambda stage, i, n: None)
        self.should_stop = should_stop or (lambda: False)
        self.device = pick_device(options.device)
        preload_optimizer_imports()   # overlaps the frames' loading below
        if self.device.type == "cpu" and options.threads > 0:
            # The fit runs thousands of small ops: OpenMP's spinning threads cost more than they
            # give, badly so when anything else uses the cores (docs/benchmarks.md).
            torch.set_num_threads(options.threads)
        self.body = body or load_body(subject.meta.get("body", "default"), subject.meta.get("gender", "neutral"),
                                      device=self.device)
        if self.body.device != self.device:
            raise DeviceError(f"the body model is on {self.body.device} but the fit runs on {self.device}",
                              P.E_WRONG_DEVICE, "load it with the fit's device (pointwear.device.pick_device)")
        if options.hidden_top and options.hidden_top not in PLAIN_TOPS:
            raise InputError(f"must be one of {', '.join(PLAIN_TOPS)} or empty (the masks decide), got "
                             f"{options.hidden_top!r}", field="hidden_top")
        self.frames_per_step = options.frames_per_step or scaled(4, self.device, 8)
        self.betas = torch.as_tensor(subject.smpl.betas, dtype=torch.float32, device=self.device)[None]
        self.train_ids, self.held_ids = split_frames(subject.num_frames, options.frames)
        self._check_masks()
        self._drop_frames_out_of_view()
        self.groups = []
        if options.drape == "parametric" and options.labels == "auto" and subject.has_labels:
            self.groups = label_groups(subject, self.train_ids + self.held_ids)
        labels = [g.label for g in self.groups]
        self.train = load_frames(subject, self.body, self.train_ids, self.device, labels)
        self.val = load_frames(subject, self.body, self.held_ids, self.device, labels) if self.held_ids else self.train
        self.full = (self.train, self.val)
        self.coarse = self._reduced_frames(labels, options.coarse_size)
        # Without labels 30-odd outfits compete before the prune; with labels at most a label's
        # families, and 128 px loses a T-shirt's sleeves against a jacket's (FitOptions.select_size).
        self.select = self._reduced_frames(labels, options.select_size) \
            if options.select_size and not self.groups else None
        self.final_targets, self._final_spec = None, None
        self.drapes: dict[str, DrapeModel] = {}     # candidate key -> its drape (made by `run`)
        self._garment_ids: dict[int, torch.Tensor] = {}
        self.rng = torch.Generator().manual_seed(options.seed)
        self.ckpt_path = self.out / CHECKPOINT_PT
        self.snapshots: list[tuple[str, int, torch.Tensor, str]] = []

    def _reduced_frames(self, labels: list[int], max_side: int) -> tuple[FrameSet, FrameSet] | None:
        """(train, val) frames at a long side of at most `max_side` px (`FitOptions.coarse_size`,
        `select_size`), or None when the images are not larger."""
        if reduced_size(self.subject.image_size, max_side) is None:
            return None
        train = load_frames(self.subject, self.body, self.train_ids, self.device, labels, max_side)
        val = load_frames(self.subject, self.body, self.held_ids, self.device, labels, max_side) \
            if self.val is not self.train else train
        return train, val

    @contextlib.contextmanager
    def _frames(self, frames: tuple[FrameSet, FrameSet] | None):
        """Fit and score on `frames` (train, val) inside the block; None: the full-size ones."""
        self.train, self.val = frames or self.full
        try:
            yield
        finally:
            self.train, self.val = self.full

    # -- losses ---------------------------------------------------------------------------------
    def frame_losses(self, drape: DrapeModel, codes: torch.Tensor, frames: FrameSet, ids: np.ndarray | torch.Tensor,
                     offsets: torch.Tensor | None = None, refresh_weights: bool = True,
                     targets: tuple[int, ...] | None = None, base: DrapeOutput | None = None,
                     frame_offsets: bool = False) -> torch.Tensor:
        """(C,) loss of each code, averaged over the frames `ids` (indices into `frames`).
        `targets`: the mask each garment of the drape is scored against (a label id, or UNION
        for the clothing mask); None scores all points against the clothing mask. `ids` on the
        host (numpy) cost no round-trip; a device tensor costs one. `base`: the drape's output
        for these codes, made once by the caller (the refinement keeps the code fixed).
        `offsets` (C or 1, P, 3), or with `frame_offsets` (F, P, 3): one per frame of `ids`
        (a single code). On reduced frames (`FrameSet.point_stride` > 1) every stride-th point
        is scored: as many points per pixel as at full size."""
        out = base if base is not None else drape(drape.constrain(codes), self.betas, refresh_weights=refresh_weights)
        points, weights = out.points, out.weights
        if offsets is not None:
            points = points + offsets
        keep = slice(None, None, frames.point_stride)
        points, weights = points[..., keep, :], weights[..., keep, :]   # (C, P, .) or (P, 24) weights
        c, f = codes.shape[0], len(ids)
        fi_host = np.tile(np.asarray(ids.tolist() if torch.is_tensor(ids) else ids, dtype=np.int64), c)
        fi = torch.as_tensor(fi_host, device=self.device)
        # the frames' joint transforms are fixed per fit (FrameSet); each code's points and
        # weights are skinned into the step's frames without repeating them per frame
        posed = skin_frames(points if frame_offsets else points.expand(c, -1, -1), weights,
                            frames.transforms[fi[:f]], frames.transl[fi[:f]], paired=frame_offsets)
        uv, _ = project(posed, frames.K[fi])
        with torch.no_grad():
            vis = visible_points(posed, frames.depth, frames.K[fi], threshold=self.options.visibility_threshold,
                                 frame_index=fi, uv=uv)
        per_pair = torch.zeros(c * f, dtype=uv.dtype, device=uv.device)
        presence = None if out.presence is None else out.presence[:, keep].repeat_interleave(f, 0)
        for key, valid in self._garment_visibility(drape, uv, vis, frames, fi, targets, keep):
            if presence is not None:   # points of a fading piece (a sleeve stub) weigh less
                valid = valid.to(uv.dtype) * presence
            target = frames.target(key)
            cham, cov = mask_losses(uv, valid, target, fi_host, scale=PAPER_SCALE * frames.scale)
            per_pair = per_pair + cham["total"] + self.options.coverage_weight * cov
        return per_pair.reshape(c, f).mean(1)

    def _garment_visibility(self, drape: DrapeModel, uv: torch.Tensor, vis: torch.Tensor, frames: FrameSet,
                            fi: torch.Tensor, targets: tuple[int, ...] | None, keep: slice = slice(None)
                            ) -> list[tuple[int, torch.Tensor]]:
        """(target key, (B, P) bool visible points scored against it) per distinct target. A
        garment under another (a shirt under a jacket) is seen only where its pixel is not the
        outer garment's label: elsewhere its points are hidden. While one label's garments are
        fitted alone (the coarse stage), the labels of the subject whose garments are all worn
        over them (an `upper` label over a `lower` one) hide them the same way: a skirt's
        waistband under a long top is not seen."""
        keys = sorted(set(targets)) if targets else [UNION]
        outer = self._outer_labels(drape, targets) if targets else ()
        if len(keys) == 1 and not outer:
            return [(keys[0], vis)]
        garment = self._garment_ids.get(id(drape))
        if garment is None:      # fixed per drape: moved to the device once, not every step
            garment = self._garment_ids[id(drape)] = torch.as_tensor(drape.garment_index, device=uv.device)
        garment = garment[keep]
        layers = [f.layer for f in drape.families]
        px = uv.round().long()
        h, w = frames.targets.masks.shape[1:]
        inside = (px[..., 0] >= 0) & (px[..., 0] < w) & (px[..., 1] >= 0) & (px[..., 1] < h)
        px = torch.stack([px[..., 0].clamp(0, w - 1), px[..., 1].clamp(0, h - 1)], -1)
        out = []
        for key in keys:
            mine = [g for g, t in enumerate(targets) if t == key]
            valid = vis & torch.isin(garment, torch.as_tensor(mine, device=uv.device))[None]
            over = {t for g, t in enumerate(targets) if t != key and layers[g] > min(layers[m] for m in mine)}
            for other in sorted(over | set(outer)):
                masks = frames.target(other).masks
                covered = masks[fi[:, None], px[..., 1], px[..., 0]] & inside
                valid = valid & ~covered
            out.append((key, valid))
        return out

    def _outer_labels(self, drape: DrapeModel, targets: tuple[int, ...]) -> tuple[int, ...]:
        """Labels of the subject that this candidate does not fit and whose every family is worn
        over all of its garments (none once the labels are joined into one outfit)."""
        families = getattr(drape, "families", None)
        if not families:
            return ()
        top = max(f.layer for f in families)
        return tuple(g.label for g in self.groups
                     if g.label not in targets and min(f.layer for f in g.families) > top)

    def prior(self, drape: DrapeModel, codes: torch.Tensor) -> torch.Tensor:
        return self.options.prior_weight * (codes ** 2).sum(1)

    @torch.no_grad()
    def score(self, drape: DrapeModel, codes: torch.Tensor, targets: tuple[int, ...] | None = None) -> torch.Tensor:
        """(C,) score of each code that compares codes and garments: the loss averaged over the
        held-out frames, or (`score_frames` "all") over every frame. A family's few parameters
        cannot overfit six frames, while two held-out frames alone let one frame decide: wide
        simulated trousers swinging in a walk scored worse than a skirt on one held-out side
        view although they explained the other seven frames far better."""
        held = self.frame_losses(drape, codes, self.val, np.arange(len(self.val)), refresh_weights=False,
                                 targets=targets)
        if self.options.score_frames != "all" or self.val is self.train:
            return held
        train = self.frame_losses(drape, codes, self.train, np.arange(len(self.train)), refresh_weights=False,
                                  targets=targets)
        return (held * len(self.val) + train * len(self.train)) / (len(self.val) + len(self.train))

    # -- stages -------------------------------------------------------------------------------
    def _sample_ids(self) -> np.ndarray:
        """Sorted frame indices for one step, drawn on the host (the fit's CPU generator)."""
        n, k = len(self.train), min(self.frames_per_step, len(self.train))
        return torch.randperm(n, generator=self.rng)[:k].sort().values.numpy()

    def _lr(self, drape: DrapeModel) -> float:
        if self.options.lr is not None:
            return self.options.lr
        return 0.05 if drape.drape_id.startswith("parametric") else 0.1

    def _optimize(self, cands: list[Candidate], state: FitState, stage: str, steps: int) -> None:
        for cand in cands:
            if cand.optimizer is None:
                cand.codes = cand.codes.detach().to(self.device).requires_grad_()
                cand.optimizer = torch.optim.Adam([cand.codes], lr=self._lr(cand.drape), betas=(0.5, 0.9), eps=1e-4)
        while state.step < steps:
            if self.should_stop():
                self._save(cands, state)
                raise FitCancelled(f"fit cancelled during {stage} at step {state.step}")
            ids = self._sample_ids()
            with self._checkpoint_on_oom(cands, state):
                for cand in cands:
                    self._adam_step(cand, ids, state.step % 10 == 0, hold=stage == "coarse")
            state.step += 1
            if self.preview is not None:
                show = state.best if stage == "coarse" and state.best.code is not None else None
                self._maybe_preview(stage, state.step, best=show, cand=cands[0])
            self.progress(stage, state.step, steps)
            prune = stage == "coarse" and state.step == self.options.prune_after
            if prune or state.step % self.options.score_every == 0 or state.step == steps:
                self._update_best(cands, state, stage)
            if prune:
                cands[:] = self._prune(cands, state)
            if state.step % self.options.checkpoint_every == 0:
                self._save(cands, state)

    def _adam_step(self, cand: Candidate, ids: np.ndarray, refresh: bool, hold: bool = False) -> None:
        """One step of the candidate's codes on the training frames `ids` (data loss + prior);
        `hold`: the coarse stage's fine-only logits get no step. The learning rate decays x 0.992."""
        loss = self.frame_losses(cand.drape, cand.codes, self.train, ids, refresh_weights=refresh,
                                 targets=cand.targets)
        total = (loss + self.prior(cand.drape, cand.codes)).sum()
        cand.optimizer.zero_grad()
        total.backward()
        if hold:
            _hold_fine_only(cand)
        cand.optimizer.step()
        for group in cand.optimizer.param_groups:
            group["lr"] *= 0.992

    @contextlib.contextmanager
    def _checkpoint_on_oom(self, cands: list[Candidate], state: FitState):
        """Out of memory in a step: save the checkpoint of the last finished step (a resume goes
        on from there) and end with a DeviceError (out_of_memory) saying what to lower."""
        try:
            yield
        except Exception as exc:
            err = device_error(exc)
            if err is None or err.code != P.E_OUT_OF_MEMORY:
                raise
            for cand in cands:
                cand.optimizer.zero_grad(set_to_none=True)
            release_memory()
            self._save(cands, state)
            raise DeviceError(f"{err.message} at step {state.step}; checkpoint kept: {self.ckpt_path}",
                              err.code, err.hint) from exc

    def _penalty(self, cand: Candidate) -> float:
        """The factor a candidate's scores are multiplied by: 1 + the penalty per garment beyond
        one per mask (`layer_penalty` with labels, `garment_penalty` without)."""
        per = self.options.layer_penalty if self.groups else self.options.garment_penalty
        return 1.0 + per * cand.extra_garments

    def _penalised(self, cand: Candidate, scores: torch.Tensor) -> torch.Tensor:
        return scores * self._penalty(cand)

    def _update_best(self, cands: list[Candidate], state: FitState, stage: str) -> None:
        """Score every code on the held-out frames; keep each candidate's best (`cand_best`)
        and, among candidates scored on the same masks, the overall best in `state.best`."""
        for cand in cands:
            scores = self._penalised(cand, self.score(cand.drape, cand.codes.detach(), cand.targets))
            k = int(scores.argmin())
            state.history.append({"stage": stage, "step": state.step, "drape": cand.key,
                                  "scores": [round(float(s), 5) for s in scores]})
            state.cand_best[cand.key] = round(float(scores[k]), 6)
            comparable = state.best.code is None or mask_group(state.best.drape_id) == mask_group(cand.key)
            if comparable and float(scores[k]) < state.best.score:
                state.best = Best(float(scores[k]), cand.key, cand.codes[k].detach().clone(), stage)
        self._snapshot(stage, state)

    def _prune(self, cands: list[Candidate], state: FitState) -> list[Candidate]:
        """Keep the `keep` best candidates of each label (or overall); the others stop here."""
        state_best = state.cand_best
        kept = []
        for group in sorted({mask_group(c.key) for c in cands}):
            mine = sorted((c for c in cands if mask_group(c.key) == group), key=lambda c: state_best[c.key])
            kept += mine[:self.options.keep]
        return [c for c in cands if c in kept]

    # -- checkpoints ----------------------------------------------------------------------------
    def _save(self, cands: list[Candidate], state: FitState, offsets: torch.Tensor | None = None) -> None:
        from ..fileio import atomic_path
        payload = {"options": asdict(self.options), "stage": state.stage, "step": state.step,
                   "history": state.history, "best": asdict(state.best) if state.best.code is not None else None,
                   "cand_best": state.cand_best, "inferred": state.inferred,
                   "candidates": [{"drape": c.key, "codes": c.codes.detach().cpu(),
                                   "outfit": None if c.spec is None else c.spec.outfit,
                                   "targets": None if c.spec is None else list(c.spec.targets),
                                   "optimizer": c.optimizer.state_dict() if c.optimizer else None}
                                  for c in cands],
                   "offsets": None if offsets is None else offsets.detach().cpu()}
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(payload, tmp)

    def _load(self) -> dict | None:
        if not self.ckpt_path.exists():
            return None
        try:
            ckpt = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: start again rather than crash
            raise InputError(f"cannot read the fit checkpoint ({exc}); delete it to start over",
                             file=self.ckpt_path) from exc
        return ckpt

    # -- the whole fit --------------------------------------------------------------------------
    def make_candidates(self) -> list[Candidate]:
        """The neural drape; or the garments fixed by `template`; or, to choose the garments,
        every family each label allows (labels/) or every plausible outfit (no labels)."""
        from ..drape import make_drapes
        from ..drape.parametric import ParametricDrape
        if self.options.drape != "parametric":
            drapes = make_drapes(self.options.drape, self.body)
            return [Candidate(d, d.random_codes(self.options.codes, self.rng)) for d in drapes]
        if self.options.template:
            drape = ParametricDrape(self.body, self.options.template)
            spec = assign_labels(drape.template, self.groups) if self.groups else None
            return [Candidate(drape, drape.random_codes(self.options.codes, self.rng), spec=spec)]
        if self.groups:
            specs = labelled_candidates(self.groups)
        elif self.options.outfits:
            specs = [CandidateSpec(o, (UNION,) * len(outfit_families(o))) for o in self.options.outfits]
        else:
            specs = unlabelled_candidates()
        n = self.options.codes if len(specs) <= self.options.keep else min(self.options.codes, self.options.select_codes)
        out = []
        for spec in specs:
            drape = ParametricDrape(self.body, spec.outfit)
            out.append(Candidate(drape, drape.random_codes(n, self.rng), spec=spec))
        return out

    def run(self) -> dict:
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        cands = self.make_candidates()
        by_id = {c.key: c for c in cands}
        self.drapes = {k: c.drape for k, c in by_id.items()}
        state, fine, offsets0 = FitState(), None, None
        ckpt = self._load()
        if ckpt is not None:
            state, fine, offsets0 = self._restore(ckpt, by_id)
            if state.stage == "coarse":   # candidates pruned before the checkpoint stay pruned
                saved = [c["drape"] for c in ckpt["candidates"]]
                cands = [by_id[k] for k in saved]
        if state.stage == "coarse":
            self._select(cands, state)
            with self._frames(self.coarse):
                self._optimize(cands, state, "coarse", self.options.coarse_steps)
                if state.best.code is None:  # resumed past the last step before any scoring
                    self._update_best(cands, state, "coarse")
            fine = self._search_cuts(_release_fine_only(self._fine_candidate(state, by_id)))
            if self.coarse is not None:      # its scores were on the reduced masks: score the start again
                self._rescore_start(fine, state)
            state.stage, state.step = "fine", 0
            self._save([fine], state)
        if state.stage == "fine":
            self._optimize([fine], state, "fine", self.options.fine_steps)
            if state.best.code is None:      # no fine step was scored (fine_steps 0): its start is the best
                self._update_best([fine], state, "fine")
            self._search_cuts_again(fine, state)
            fine = self._drop_hidden_layers(fine, state)
            state.stage, state.step = "refine", 0
            self._save([fine], state)
        best_drape = self.drapes[state.best.drape_id]
        self.final_targets = fine.targets if fine is not None else None
        self._final_spec = fine.spec if fine is not None else None
        offsets = self._refine(best_drape, state, offsets0)
        return self._finish(best_drape, state, offsets, time.time() - t0)

    def _select(self, cands: list[Candidate], state: FitState) -> None:
        """The coarse stage's first `prune_after` steps, while more candidates compete than are kept,
        on frames reduced to `FitOptions.select_size`; it ends with the prune. The kept candidates
        are then scored again on the coarse stage's frames (scores on different masks do not
        compare), and the pruned ones leave the scores the later choices read."""
        steps = min(self.options.prune_after, self.options.coarse_steps)
        groups = {mask_group(c.key) for c in cands}
        if self.select is None or state.step >= steps or len(cands) <= self.options.keep * len(groups):
            return
        with self._frames(self.select):
            self._optimize(cands, state, "coarse", steps)
        state.best, state.cand_best = Best(), {}
        with self._frames(self.coarse):
            self._update_best(cands, state, "coarse")

    def _fine_candidate(self, state: FitState, by_id: dict[str, Candidate]) -> Candidate:
        """The fine stage starts from the best candidate's start code (`_start_code`). With
        labels, the best candidate of each label are joined into one outfit, each garment keeping
        its start code and its label."""
        if not self.groups or self.options.template:
            group = by_id[state.best.drape_id]
            return self._infer_hidden(Candidate(group.drape, self._start_code(group)[None].clone(), spec=group.spec),
                                      state)
        from ..drape.parametric import ParametricDrape
        best = {}
        for cand in by_id.values():
            g = mask_group(cand.key)
            if cand.key in state.cand_best and (g not in best or state.cand_best[cand.key] < state.cand_best[best[g].key]):
                best[g] = cand
        winners = sorted(best.values(), key=lambda c: state.cand_best[c.key])
        spec, notes = join_winners([(c.spec, state.cand_best[c.key]) for c in winners])
        for note in notes:
            warnings.warn(f"{self.subject.root}: {note}")
        drape = ParametricDrape(self.body, spec.outfit)
        parts = {}
        for cand in winners:
            code = self._start_code(cand)
            for fam, seg in zip(cand.drape.families, cand.drape.segments):
                parts.setdefault(fam.name, code[seg])
        start = torch.cat([parts[f.name] for f in drape.families])
        self.drapes[spec.key] = drape
        # Scores of the joined outfit are on all labels at once: not comparable with one label's.
        state.best = Best()
        return self._infer_hidden(Candidate(drape, start[None].clone(), spec=spec), state)

    def _search_cuts(self, cand: Candidate) -> Candidate:
        """The fine stage's start for each garment's cut parameters (families.CUT_PARAMS: they
        move which points are there, not where, and get almost no gradient): every combination
        of `FitOptions.cut_grid` logits, scored on the training frames (data loss + prior, the
        fine stage's own loss), the lowest kept; the other logits are left as they are. One
        garment after another, each with the earlier ones' choice. Runs once, before the fine
        stage's first step."""
        families, grid = getattr(cand.drape, "families", None), tuple(self.options.cut_grid)
        if not families or not grid:
            return cand
        code = cand.codes.detach()[0].clone()
        ids = np.arange(len(self.train))
        for fam, seg in zip(families, cand.drape.segments):
            names = [n for n, _, _ in fam.ranges]
            index = [seg.start + names.index(p) for p in CUT_PARAMS.get(fam.name, ())]
            if not index:
                continue
            combos = torch.tensor(list(itertools.product(grid, repeat=len(index))), dtype=code.dtype,
                                  device=code.device)                                    # (G, k)
            codes = code.expand(len(combos), -1).clone()
            codes[:, index] = combos
            with torch.no_grad():
                losses = torch.cat([self.frame_losses(cand.drape, chunk, self.train, ids, targets=cand.targets)
                                    + self.prior(cand.drape, chunk) for chunk in codes.split(CUT_CHUNK)])
            code = codes[int(torch.argmin(losses))]
        return Candidate(cand.drape, code[None].clone(), spec=cand.spec)

    def _search_cuts_again(self, fine: Candidate, state: FitState) -> None:
        """The cut search once more from the best code after the fine stage: the other parameters
        have settled, and Adam has moved the cuts the one way their gradient goes (on clothsim
        dress_1000 the straps went from the search's 0.70 to 0.54 while 0.89 had the lower
        training loss). Kept when it lowers the score the stages compare by."""
        best = state.best
        if best.code is None or best.drape_id != fine.key or not getattr(fine.drape, "families", None):
            return
        cand = self._search_cuts(Candidate(fine.drape, best.code.to(self.device)[None], spec=fine.spec))
        if torch.equal(cand.codes[0], best.code.to(self.device)):
            return
        with torch.no_grad():
            score = float(self._penalised(cand, self.score(cand.drape, cand.codes, cand.targets))[0])
        state.history.append({"stage": "cuts", "step": state.step, "drape": fine.key, "scores": [round(score, 5)]})
        if score < best.score:
            state.best = Best(score, fine.key, cand.codes[0].clone(), best.stage)

    def _drop_hidden_layers(self, fine: Candidate, state: FitState) -> Candidate:
        """The outfit without a top that a jacket on the same label is worn over, after the fine
        stage: the other garments start from their fitted codes and get `fine_steps` Adam steps,
        then it replaces the best unless the layered outfit scores `FitOptions.drop_penalty`
        better per garment (both fitted now, so not the selection's larger `layer_penalty`). The
        selection compares a jacket alone with a jacket over a top early in the coarse stage,
        before the jacket alone has settled (it starts behind: the top fills its gaps)
        (docs/fitting.md, "Choosing the garments"). Only with labels (measured there); not with
        fixed garments (`template`)."""
        from ..drape.parametric import ParametricDrape
        drape, best = fine.drape, state.best
        if (not self.groups or self.options.template or fine.spec is None or best.code is None
                or best.drape_id != fine.key or not hasattr(drape, "families")):
            return fine
        fams, targets = drape.families, fine.spec.targets
        for g, fam in enumerate(fams):
            if not any(targets[h] == targets[g] and fams[h].layer > fam.layer for h in range(len(fams))):
                continue
            rest = {fams[h].name: h for h in range(len(fams)) if h != g}
            new = ParametricDrape(self.body, outfit_name(tuple(fams[h] for h in rest.values())))
            code = torch.cat([best.code[drape.segments[rest[f.name]]] for f in new.families]).to(self.device)
            cand = Candidate(new, code[None].clone().requires_grad_(),
                             spec=CandidateSpec(new.template, tuple(targets[rest[f.name]] for f in new.families)))
            # the garments left were fitted around the top: they settle without it first, as long
            # as the fine stage (no checkpoint: a resume runs this again from the fine stage's end;
            # its frame draws are given back when the top stays, so the fit goes on as without it)
            cand.optimizer = torch.optim.Adam([cand.codes], lr=self._lr(new), betas=(0.5, 0.9), eps=1e-4)
            draws = self.rng.get_state()
            for step in range(self.options.fine_steps):
                if self.should_stop():
                    raise FitCancelled(f"fit cancelled while trying {cand.key} without the {fam.name}")
                self._adam_step(cand, self._sample_ids(), step % 10 == 0)
            code = cand.codes[0].detach()
            with torch.no_grad():
                score = float(self._penalised(cand, self.score(new, code[None], cand.targets))[0])
            state.history.append({"stage": "layers", "step": state.step, "drape": cand.key,
                                  "scores": [round(score, 5)]})
            # both fitted now: the layered outfit's own score with the (smaller) penalty of this comparison
            extra = fine.extra_garments - cand.extra_garments
            layered = best.score / self._penalty(fine) * (1 + self.options.drop_penalty * extra)
            if score < layered:
                outer = "+".join(f.name for h, f in enumerate(fams) if targets[h] == targets[g] and f.layer > fam.layer)
                warnings.warn(f"{self.subject.root}: the {outer} alone explains label {targets[g]} about as well as "
                              f"worn over the {fam.name} (score {score:.5f} against {layered:.5f} with "
                              f"FitOptions.drop_penalty): the {fam.name} is left out")
                self.drapes[cand.key] = new
                state.best = Best(score, cand.key, code.clone(), best.stage)
                state.inferred = [note for note in state.inferred if note.get("index") != g]
                return Candidate(new, code[None].clone(), spec=cand.spec)
            self.rng.set_state(draws)
        return fine

    def _rescore_start(self, fine: Candidate, state: FitState) -> None:
        """The fine stage's start code scored on the full-size frames becomes the best so far
        (the coarse stage's scores, on reduced masks, are not comparable with the fine stage's)."""
        score = self._penalised(fine, self.score(fine.drape, fine.codes.detach(), fine.targets))
        state.best = Best(float(score[0]), fine.key, fine.codes[0].detach().clone(), "coarse")

    def _infer_hidden(self, cand: Candidate, state: FitState) -> Candidate:
        """A plain top under a jacket whose sleeves end inside the jacket's is hidden there in
        every frame: the masks cannot tell a tank, a T-shirt or a long sleeve apart, and their
        loss should not decide. The top becomes the documented default (`FitOptions.hidden_top`,
        a T-shirt) with its sleeves at mid-range and its other parameters kept; a warning names
        it and result.json "inferred" records it. A top with a label of its own or one its label
        names, and fixed garments (`template`), are left as they are."""
        from ..drape.parametric import ParametricDrape
        default, drape = self.options.hidden_top, cand.drape
        if not default or self.options.template or cand.spec is None or not hasattr(drape, "families"):
            return cand
        code = cand.codes[0].detach()
        params = drape.describe(code)
        names, targets = {g.label: g.name for g in self.groups}, cand.spec.targets
        outer = [t for p, t in zip(params, targets) if p["name"] == "jacket"]
        # only a top scored on the jacket's own mask (a label of its own would show its sleeves)
        allowed = [names.get(t) not in FAMILIES and t in outer for t in targets]
        g = hidden_top(params, allowed, self.options.hidden_margin)
        if g is None:
            return cand
        scored = params[g]["name"]
        outfit, start = replace_family(cand.spec.outfit, code, g, default)
        spec = CandidateSpec(outfit, cand.spec.targets)
        new = ParametricDrape(self.body, outfit)
        self.drapes[spec.key] = new
        state.best = Best()      # the outfit the masks preferred no longer competes
        state.inferred = [{"garment": default, "index": g, "masks_preferred": scored, "piece": "sleeves",
                           "why": "under the jacket's sleeves in every frame", "option": "hidden_top"}]
        warnings.warn(f"{self.subject.root}: the {scored} under the jacket never shows its sleeves (they end "
                      f"inside the jacket's), so the masks cannot tell a tank, a T-shirt or a long sleeve apart: "
                      f"it is taken to be a {default}, sleeves at mid-length (FitOptions.hidden_top; "
                      f'result.json "inferred")')
        return Candidate(new, start[None].clone(), spec=spec)

    def _start_code(self, cand: Candidate) -> torch.Tensor:
        """The fine stage's start for one candidate: the mean of its codes (spherical for codes in
        a ball; plain for the parametric logits) or, when the codes settled in different basins and
        one of them scores better on the held-out frames than their mean, that code."""
        codes = cand.codes.detach()
        mean = codes.mean(0) if cand.drape.drape_id.startswith("parametric") else slerp_mean(codes)
        if len(codes) == 1:
            return mean
        starts = torch.cat([mean[None], codes])
        return starts[self.score(cand.drape, starts, cand.targets).argmin()]

    def _restore(self, ckpt: dict, by_id: dict[str, Candidate]
                 ) -> tuple[FitState, Candidate | None, torch.Tensor | None]:
        state = FitState(ckpt["stage"], ckpt["step"], Best(), ckpt["history"], ckpt.get("cand_best", {}),
                         ckpt.get("inferred", []))
        if ckpt["best"] is not None:
            state.best = Best(**ckpt["best"])
        restored = []
        for saved in ckpt["candidates"]:
            drape = by_id[saved["drape"]].drape if saved["drape"] in by_id else None
            spec = None if saved.get("targets") is None else CandidateSpec(saved["outfit"], tuple(saved["targets"]))
            if drape is None and state.stage != "coarse" and spec is not None:   # a joined outfit
                from ..drape.parametric import ParametricDrape
                drape = ParametricDrape(self.body, spec.outfit)
                self.drapes[spec.key] = drape
            if drape is None:
                raise InputError(f"checkpoint drape {saved['drape']!r} does not match this fit "
                                 f"({sorted(by_id)}); delete it to start over", file=self.ckpt_path)
            codes = saved["codes"]
            fresh = codes.shape[-1] != drape.code_dim      # saved before a family grew a parameter
            if fresh and drape.drape_id.startswith("parametric:"):
                codes = torch.stack([torch.as_tensor(upgrade_code(drape.template, c.numpy())) for c in codes])
            if codes.shape[-1] != drape.code_dim:
                raise InputError(f"checkpoint codes have {codes.shape[-1]} entries, the {drape.drape_id} drape takes "
                                 f"{drape.code_dim}; delete it to start over", file=self.ckpt_path)
            cand = Candidate(drape, codes.to(self.device).requires_grad_(), spec=spec)
            cand.optimizer = torch.optim.Adam([cand.codes], lr=self._lr(cand.drape), betas=(0.5, 0.9), eps=1e-4)
            if saved["optimizer"] and not fresh:
                cand.optimizer.load_state_dict(saved["optimizer"])
            restored.append(cand)
        if state.stage == "coarse":
            for cand in restored:
                by_id[cand.key].codes = cand.codes
                by_id[cand.key].optimizer = cand.optimizer
        fine = restored[0] if state.stage != "coarse" and restored else None
        best = self.drapes.get(state.best.drape_id)
        if best is not None and state.best.code is not None and state.best.code.shape[-1] != best.code_dim:
            state.best.code = torch.as_tensor(upgrade_code(best.template, state.best.code.numpy()))
        return state, fine, ckpt.get("offsets")

    # -- free-form refinement -------------------------------------------------------------------
    def _refine(self, drape: DrapeModel, state: FitState, start: torch.Tensor | None) -> torch.Tensor | None:
        """Free-form detail outside the code space (fit/refine.py): offsets along the outward
        normals of the rest-pose garment, in a smooth basis of the garment surface, kept
        outside the body, changing with time as a polynomial (`RefineOptions.time_degree`) and
        linearly with the frame's pose (`RefineOptions.pose_features`); kept only
        if the held-out score improves. Returns (N, P, 3) offsets, one per frame of the subject."""
        from .refine import (Clearance, body_surface, frame_features, harmonic_basis, pose_features, surface_graph,
                             vertex_normals)
        steps, ro = self.options.refine_steps, self.options.refine
        if steps <= 0:
            return None
        if not self.held_ids:    # nothing to judge it on: free-form offsets would only overfit
            warnings.warn(f"{self.subject.root}: no held-out frame (fewer than 4 frames, or --frames names them "
                          "all), so the free-form refinement is skipped")
            return None
        code = state.best.code.to(self.device)[None]
        with torch.no_grad():
            base = drape(drape.constrain(code), self.betas)
            rest = base.points[0]
        rest_np = rest.cpu().numpy().astype(np.float64)
        faces = getattr(drape, "faces", None)
        body_v, body_n = body_surface(self.body, self.betas)
        normals_np = vertex_normals(rest_np, faces, body_v, body_n, ro.knn + 1)
        basis = torch.as_tensor(harmonic_basis(surface_graph(rest_np, faces, ro.knn), ro.basis), device=self.device)
        normals = torch.as_tensor(normals_np, device=self.device)
        clearance = Clearance.build(rest_np, body_v, body_n, self.device)
        # Never deeper than at the start: the first-order distance misjudges creases (armpits).
        floor = torch.minimum(clearance.signed_distance(rest), torch.tensor(ro.clearance, device=self.device))
        # (degree + 1, K) coefficients: the static shape first, then its change with time; two
        # training frames per time coefficient at least (3 of 4 frames: one static shape)
        degree = max(0, min(ro.time_degree, len(self.train_ids) // 2 - 1))
        # then one row per pose feature, time and pose rows together fewer than the training frames
        n_pose = max(0, min(ro.pose_features, len(self.train_ids) - 2 - degree))
        body_pose = torch.as_tensor(self.subject.smpl.body_pose, dtype=torch.float32, device=self.device)
        pose = pose_features(body_pose, n_pose)                                    # (N, D)
        # Two runs side by side when the pose moves: time only (its pose rows held at 0) and time
        # and pose; the held-out frames pick the better (a linear map from the pose can overfit six
        # training frames: clothsim jacket_1). Adam is elementwise, so the runs do not interact.
        rows = degree + 1 + pose.shape[1]
        keep = torch.ones(2 if pose.shape[1] else 1, rows, 1, device=self.device)  # (C, rows, 1)
        keep[0, degree + 1:] = 0
        coeff = torch.zeros(len(keep), rows, basis.shape[1], device=self.device)
        if start is not None:     # resume: project the saved (static) offsets back onto the basis
            coeff[:, 0] = basis.T @ (start.to(self.device) * normals).sum(1)
        coeff.requires_grad_()
        opt = torch.optim.Adam([coeff], lr=ro.lr)
        n = self.subject.num_frames
        powers = {name: frame_features(ids, n, degree, pose)                      # (F, rows)
                  for name, ids in (("train", self.train_ids), ("val", self.held_ids), ("all", range(n)))}
        offsets_of = lambda c, t: ((t @ c) @ basis.T)[..., None] * normals  # noqa: E731  (F, P, 3)
        mean_offsets = lambda c: offsets_of(c[-1], powers["all"].mean(0, keepdim=True))[0]  # noqa: E731  (P, 3)
        val_ids = np.arange(len(self.val))
        score = lambda c: self.frame_losses(drape, code, self.val, val_ids, offsets=offsets_of(c, powers["val"]),  # noqa: E731
                                            targets=self.final_targets, base=base, frame_offsets=True)
        with torch.no_grad():
            best_score, best_coeff = float(score(coeff[0])), None
        worse = 0
        if state.step == 0:
            state.history.append({"stage": "refine", "step": 0, "scores": [round(best_score, 5)]})
        while state.step < steps:
            if self.should_stop():
                self._save([Candidate(drape, code, spec=self._final_spec)], state, mean_offsets(coeff.detach()))
                raise FitCancelled(f"fit cancelled during refine at step {state.step}")
            ids = self._sample_ids()
            loss = 0.0
            for c in coeff * keep:
                offsets = offsets_of(c, powers["train"][ids])
                data = self.frame_losses(drape, code, self.train, ids, offsets=offsets, targets=self.final_targets,
                                         base=base, frame_offsets=True).sum()
                inside = torch.relu(floor - clearance.signed_distance(rest + offsets))
                loss = loss + data + ro.prior_weight * offsets.square().sum(-1).mean() \
                    + ro.clearance_weight * inside.square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            state.step += 1
            if self.preview is not None:
                self._maybe_preview("refine", state.step, cand=Candidate(drape, code), offsets=mean_offsets(coeff.detach()))
            self.progress("refine", state.step, steps)
            if state.step % self.options.score_every == 0 or state.step == steps:
                with torch.no_grad():
                    scores = [float(score(c)) for c in coeff * keep]
                state.history.append({"stage": "refine", "step": state.step, "scores": [round(s, 5) for s in scores]})
                i = int(np.argmin(scores))
                if scores[i] < best_score:
                    best_score, best_coeff, worse = scores[i], (coeff * keep)[i].detach().clone(), 0
                else:
                    worse += 1
                self._save([Candidate(drape, code, spec=self._final_spec)], state, mean_offsets(coeff.detach()))
                if worse >= ro.patience:   # held-out frames stopped gaining: the rest would overfit
                    break
        if best_coeff is None:
            return None
        state.best.score, state.best.stage = best_score, "refine"
        return offsets_of(best_coeff, powers["all"])      # (N, P, 3): every frame of the subject

    def _maybe_preview(self, stage: str, step: int, best: Best | None = None, cand: Candidate | None = None,
                       offsets: torch.Tensor | None = None) -> None:
        """Call `self.preview` with the best code so far (`best`) or the candidate's first code
        drawn on the first training frame, if the last preview is old enough. Read-only for the
        fit: no random numbers, cached skin weights (refresh_weights=False)."""
        now = time.monotonic()
        if self._preview_at is not None and now - self._preview_at < self.preview_every_s:
            return
        self._preview_at = now
        try:
            if best is not None:
                drape, code = self.drapes[best.drape_id], best.code
            else:
                drape, code = cand.drape, cand.codes[0]
            image, points = self._preview_image(drape, code, offsets)
        except Exception as exc:  # a preview never stops a fit
            warnings.warn(f"fit preview failed, previews are off: {type(exc).__name__}: {exc}")
            self.preview = None
            return
        if self.preview_points is not None:
            self.preview_points(points)
        self.preview(image, stage, step)

    @torch.no_grad()
    def _preview_image(self, drape: DrapeModel, code: torch.Tensor, offsets: torch.Tensor | None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """The fit drawn on the first training frame (H, W, 3) and its rest-pose points (P, 3)."""
        d = drape(drape.constrain(code.detach().to(self.device)[None]), self.betas, refresh_weights=False)
        points = d.points if offsets is None else d.points + offsets[None]
        f = self.full[0]         # full size also while the coarse stage fits reduced frames
        posed = self.body.pose_points(points, d.weights, self.betas, f.global_orient[:1], f.body_pose[:1],
                                      f.transl[:1])
        uv, _ = project(posed, f.K[:1])
        vis = visible_points(posed, f.depth[:1], f.K[:1], threshold=self.options.visibility_threshold)
        scale = max(1, self.subject.image_size[0] // 256)
        return (_overlay(self.subject.frame(self.train_ids[0]), uv[0].cpu().numpy(), vis[0].cpu().numpy(), scale),
                points[0].cpu().numpy())

    def _snapshot(self, stage: str, state: FitState) -> None:
        """Keep the current best's projected points on the first training frame for the GIF."""
        if state.best.code is None:
            return
        self.snapshots.append((stage, state.step, state.best.code.detach().cpu().clone(), state.best.drape_id))

    def _finish(self, drape: DrapeModel, state: FitState, offsets: torch.Tensor | None, seconds: float) -> dict:
        return write_outputs(self, drape, state, offsets, seconds)

    @torch.no_grad()
    def _drop_frames_out_of_view(self, min_share: float = 0.2) -> None:
        """Frames whose body mostly falls outside the image (or behind the camera) cannot be
        fitted: warn, naming them, and leave them out; refuse when none is left to fit."""
        smpl, (h, w) = self.subject.smpl, self.subject.image_size
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        verts = self.body(t(smpl.betas), t(smpl.global_orient), t(smpl.body_pose), t(smpl.transl)).vertices
        uv, z = project(verts, t(self.subject.K))
        inside = ((z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)).float().mean(1)
        bad = [i for i, share in enumerate(inside.tolist()) if share < min_share]
        if not bad:
            return
        warnings.warn(f"{self.subject.root}: frames {bad}: the body is out of view "
                      f"(under {min_share:.0%} of it projects into the image); they are left out of the fit")
        self.train_ids = [i for i in self.train_ids if i not in bad]
        self.held_ids = [i for i in self.held_ids if i not in bad]
        if not self.train_ids:
            raise InputError(f"no frame to fit: the body is out of view in frames {bad}; check smpl.npz "
                             "(transl, global_orient) and K", file=self.subject.root / "smpl.npz")

    def _check_masks(self) -> None:
        empty = [i for i in range(self.subject.num_frames) if not self.subject.mask(i).any()]
        if empty:
            raise InputError(f"clothing masks of frames {empty} are empty: nothing to fit there; "
                             f"leave them out with --frames", file=self.subject.root / "masks")


def fit_outfit(subject_dir: str | Path, out: str | Path, options: FitOptions,
               progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Fit an outfit to a subject folder and write the results into `out` (see outputs.py)."""
    subject = read_subject(subject_dir)
    return OutfitFitter(subject, Path(out), options, progress, should_stop).run()


def _hold_fine_only(cand: Candidate) -> None:
    """No gradient for the logits the coarse stage holds at the low end (a parametric drape's
    `fine_only`, families.FINE_ONLY): Adam then leaves them where they are. codes.grad (C, D);
    the indices are a host list (no host wait in the step)."""
    index = getattr(cand.drape, "fine_only_index", None)
    if index and cand.codes.grad is not None:
        cand.codes.grad[:, index] = 0.0


def _release_fine_only(cand: Candidate) -> Candidate:
    """The fine stage's candidate with its `fine_only` logits moved from the low end to
    FINE_START_LOGIT, so the fine stage fits them (at the low end their gradient vanishes)."""
    from ..garment.families import FINE_START_LOGIT
    index = getattr(cand.drape, "fine_only_index", None)
    if not index:
        return cand
    codes = cand.codes.detach().clone()
    codes[:, index] = FINE_START_LOGIT
    return Candidate(cand.drape, codes, spec=cand.spec)
