"""Fitting an outfit code to clothing masks, the Point-Based Clothing way done right: several
random codes optimised in parallel (coarse), their spherical mean refined (fine), the best kept
by a held-out-frame score; losses are distance-transform 2D Chamfer on the visible points (both
directions) plus soft coverage and a code prior; then an optional regularised free-form
refinement of per-point offsets. Checkpointed, resumable, cancellable, with progress."""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..body import BodyModel, load_body
from ..data.subject import Subject, read_subject
from ..device import pick_device
from ..drape.base import DrapeModel
from ..errors import InputError
from ..link.protocol import CHECKPOINT_PT
from ..render.rasterizer import project
from .frames import FrameSet, load_frames
from .losses import chamfer_2d, soft_coverage_loss
from .outputs import _overlay, write_outputs
from .visibility import visible_points

from .state import (  # noqa: F401 - re-exported: callers import them from here
    Best, Candidate, FitCancelled, FitOptions, FitState, Preview, Progress, split_frames)


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
                 preview_every_s: float = 2.0) -> None:
        self.subject, self.out, self.options = subject, Path(out), options
        # `preview`: called with the current fit drawn over the first training frame, after the
        # first step and then at most every `preview_every_s` seconds (the server's live view).
        self.preview, self.preview_every_s, self._preview_at = preview, preview_every_s, None
        self.progress = progress or (lambda stage, i, n: None)
        self.should_stop = should_stop or (lambda: False)
        self.device = pick_device(options.device)
        if self.device.type == "cpu" and options.threads > 0:
            # The fit runs thousands of small ops: OpenMP's spinning threads cost more than they
            # give, badly so when anything else uses the cores (docs/benchmarks.md).
            torch.set_num_threads(options.threads)
        self.body = body or load_body(subject.meta.get("body", "default"), subject.meta.get("gender", "neutral"),
                                      device=self.device)
        self.betas = torch.as_tensor(subject.smpl.betas, dtype=torch.float32, device=self.device)[None]
        self.train_ids, self.held_ids = split_frames(subject.num_frames, options.frames)
        self._check_masks()
        self._drop_frames_out_of_view()
        self.train = load_frames(subject, self.body, self.train_ids, self.device)
        self.val = load_frames(subject, self.body, self.held_ids, self.device) if self.held_ids else self.train
        self.rng = torch.Generator().manual_seed(options.seed)
        self.ckpt_path = self.out / CHECKPOINT_PT
        self.snapshots: list[tuple[str, int, torch.Tensor, str]] = []

    # -- losses ---------------------------------------------------------------------------------
    def frame_losses(self, drape: DrapeModel, codes: torch.Tensor, frames: FrameSet, ids: torch.Tensor,
                     offsets: torch.Tensor | None = None, refresh_weights: bool = True) -> torch.Tensor:
        """(C,) loss of each code, averaged over the frames `ids` (indices into `frames`)."""
        out = drape(drape.constrain(codes), self.betas, refresh_weights=refresh_weights)
        points, weights = out.points, out.weights
        if offsets is not None:
            points = points + offsets
        c, f = codes.shape[0], len(ids)
        rest = points.repeat_interleave(f, 0)
        w = weights.repeat_interleave(f, 0) if weights.dim() == 3 else weights
        fi = ids.repeat(c)
        posed = self.body.pose_points(rest, w, self.betas, frames.global_orient[fi], frames.body_pose[fi],
                                      frames.transl[fi])
        uv, _ = project(posed, frames.K[fi])
        with torch.no_grad():
            vis = visible_points(posed, frames.depth[fi], frames.K[fi], threshold=self.options.visibility_threshold)
        cham = chamfer_2d(uv, vis, frames.targets, fi, reduction="none")["total"]
        cov = soft_coverage_loss(uv, vis, frames.targets, fi, reduction="none")
        per_pair = cham + self.options.coverage_weight * cov
        return per_pair.reshape(c, f).mean(1)

    def prior(self, drape: DrapeModel, codes: torch.Tensor) -> torch.Tensor:
        return self.options.prior_weight * (codes ** 2).sum(1)

    @torch.no_grad()
    def score(self, drape: DrapeModel, codes: torch.Tensor) -> torch.Tensor:
        """Held-out score of each code: the Chamfer loss on every held-out frame."""
        ids = torch.arange(len(self.val), device=self.device)
        return self.frame_losses(drape, codes, self.val, ids, refresh_weights=False)

    # -- stages -------------------------------------------------------------------------------
    def _sample_ids(self) -> torch.Tensor:
        n, k = len(self.train), min(self.options.frames_per_step, len(self.train))
        return torch.randperm(n, generator=self.rng)[:k].sort().values.to(self.device)

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
            for cand in cands:
                refresh = state.step % 10 == 0
                loss = self.frame_losses(cand.drape, cand.codes, self.train, ids, refresh_weights=refresh)
                total = (loss + self.prior(cand.drape, cand.codes)).sum()
                cand.optimizer.zero_grad()
                total.backward()
                cand.optimizer.step()
                for group in cand.optimizer.param_groups:
                    group["lr"] *= 0.992
            state.step += 1
            if self.preview is not None:
                show = state.best if stage == "coarse" and state.best.code is not None else None
                self._maybe_preview(stage, state.step, best=show, cand=cands[0])
            self.progress(stage, state.step, steps)
            if state.step % self.options.score_every == 0 or state.step == steps:
                self._update_best(cands, state, stage)
            if state.step % self.options.checkpoint_every == 0:
                self._save(cands, state)

    def _update_best(self, cands: list[Candidate], state: FitState, stage: str) -> None:
        for cand in cands:
            scores = self.score(cand.drape, cand.codes.detach())
            k = int(scores.argmin())
            state.history.append({"stage": stage, "step": state.step, "drape": cand.drape.drape_id,
                                  "scores": [round(float(s), 5) for s in scores]})
            if float(scores[k]) < state.best.score:
                state.best = Best(float(scores[k]), cand.drape.drape_id, cand.codes[k].detach().clone(), stage)
        self._snapshot(stage, state)

    # -- checkpoints ----------------------------------------------------------------------------
    def _save(self, cands: list[Candidate], state: FitState, offsets: torch.Tensor | None = None) -> None:
        from ..fileio import atomic_path
        payload = {"options": asdict(self.options), "stage": state.stage, "step": state.step,
                   "history": state.history, "best": asdict(state.best) if state.best.code is not None else None,
                   "candidates": [{"drape": c.drape.drape_id, "codes": c.codes.detach().cpu(),
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
        from ..drape import make_drapes
        drapes = make_drapes(self.options.drape, self.body, self.options.template)
        return [Candidate(d, d.random_codes(self.options.codes, self.rng)) for d in drapes]

    def run(self) -> dict:
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        cands = self.make_candidates()
        by_id = {c.drape.drape_id: c for c in cands}
        self.drapes = {k: c.drape for k, c in by_id.items()}
        state, fine, offsets0 = FitState(), None, None
        ckpt = self._load()
        if ckpt is not None:
            state, fine, offsets0 = self._restore(ckpt, by_id)
        if state.stage == "coarse":
            self._optimize(cands, state, "coarse", self.options.coarse_steps)
            if state.best.code is None:  # resumed past the last step before any scoring
                self._update_best(cands, state, "coarse")
            fine = self._fine_candidate(state, by_id)
            state.stage, state.step = "fine", 0
            self._save([fine], state)
        if state.stage == "fine":
            self._optimize([fine], state, "fine", self.options.fine_steps)
            state.stage, state.step = "refine", 0
            self._save([fine], state)
        best_drape = by_id[state.best.drape_id].drape
        offsets = self._refine(best_drape, state, offsets0)
        return self._finish(best_drape, state, offsets, time.time() - t0)

    def _fine_candidate(self, state: FitState, by_id: dict[str, Candidate]) -> Candidate:
        """The fine stage starts from the mean of the best template's codes (spherical for
        codes in a ball; plain for the parametric logits)."""
        group = by_id[state.best.drape_id]
        codes = group.codes.detach()
        start = codes.mean(0) if group.drape.drape_id.startswith("parametric") else slerp_mean(codes)
        return Candidate(group.drape, start[None].clone())

    def _restore(self, ckpt: dict, by_id: dict[str, Candidate]
                 ) -> tuple[FitState, Candidate | None, torch.Tensor | None]:
        state = FitState(ckpt["stage"], ckpt["step"], Best(), ckpt["history"])
        if ckpt["best"] is not None:
            state.best = Best(**ckpt["best"])
        restored = []
        for saved in ckpt["candidates"]:
            if saved["drape"] not in by_id:
                raise InputError(f"checkpoint drape {saved['drape']!r} does not match this fit "
                                 f"({sorted(by_id)}); delete it to start over", file=self.ckpt_path)
            cand = Candidate(by_id[saved["drape"]].drape, saved["codes"].to(self.device).requires_grad_())
            cand.optimizer = torch.optim.Adam([cand.codes], lr=self._lr(cand.drape), betas=(0.5, 0.9), eps=1e-4)
            if saved["optimizer"]:
                cand.optimizer.load_state_dict(saved["optimizer"])
            restored.append(cand)
        if state.stage == "coarse":
            for cand in restored:
                by_id[cand.drape.drape_id].codes = cand.codes
                by_id[cand.drape.drape_id].optimizer = cand.optimizer
        fine = restored[0] if state.stage == "fine" else None
        return state, fine, ckpt.get("offsets")

    # -- free-form refinement -------------------------------------------------------------------
    def _refine(self, drape: DrapeModel, state: FitState, start: torch.Tensor | None) -> torch.Tensor | None:
        """Free-form detail outside the code space: each point moves along its surface normal
        (the one direction silhouettes constrain without depth ambiguity), regularised to be
        smooth over its neighbours and small; kept only if the held-out score improves."""
        steps = self.options.refine_steps
        if steps <= 0:
            return None
        code = state.best.code.to(self.device)[None]
        with torch.no_grad():
            rest = drape(drape.constrain(code), self.betas).points[0]
        normals, neighbours = surface_normals(rest.cpu().numpy())
        normals = torch.as_tensor(normals, device=self.device)
        neighbours = torch.as_tensor(neighbours, device=self.device)
        amount = torch.zeros(rest.shape[0], device=self.device)
        if start is not None:
            amount = (start.to(self.device) * normals).sum(1)
        amount.requires_grad_()
        opt = torch.optim.Adam([amount], lr=2e-4)
        val_ids = torch.arange(len(self.val), device=self.device)
        with torch.no_grad():
            base = self.frame_losses(drape, code, self.val, val_ids, refresh_weights=False).item()
        best_amount, best_score = None, base
        while state.step < steps:
            offsets = amount[:, None] * normals
            if self.should_stop():
                self._save([Candidate(drape, code)], state, offsets)
                raise FitCancelled(f"fit cancelled during refine at step {state.step}")
            data = self.frame_losses(drape, code, self.train, self._sample_ids(), offsets=offsets[None],
                                     refresh_weights=False).sum()
            smooth = ((amount - amount[neighbours].mean(1)) ** 2).mean()
            loss = data + 100.0 * smooth + 10.0 * (amount ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            state.step += 1
            if self.preview is not None:
                self._maybe_preview("refine", state.step, cand=Candidate(drape, code),
                                    offsets=amount.detach()[:, None] * normals)
            self.progress("refine", state.step, steps)
            if state.step % self.options.score_every == 0 or state.step == steps:
                with torch.no_grad():
                    s = self.frame_losses(drape, code, self.val, val_ids, offsets=(amount[:, None] * normals)[None],
                                          refresh_weights=False).item()
                state.history.append({"stage": "refine", "step": state.step, "scores": [round(s, 5)]})
                if s < best_score:
                    best_score, best_amount = s, amount.detach().clone()
                self._save([Candidate(drape, code)], state, amount.detach()[:, None] * normals)
        if best_amount is None:
            return None
        state.best.score, state.best.stage = best_score, "refine"
        return best_amount[:, None] * normals

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
            image = self._preview_image(drape, code, offsets)
        except Exception as exc:  # a preview never stops a fit
            warnings.warn(f"fit preview failed, previews are off: {type(exc).__name__}: {exc}")
            self.preview = None
            return
        self.preview(image, stage, step)

    @torch.no_grad()
    def _preview_image(self, drape: DrapeModel, code: torch.Tensor, offsets: torch.Tensor | None) -> np.ndarray:
        d = drape(drape.constrain(code.detach().to(self.device)[None]), self.betas, refresh_weights=False)
        points = d.points if offsets is None else d.points + offsets[None]
        f = self.train
        posed = self.body.pose_points(points, d.weights, self.betas, f.global_orient[:1], f.body_pose[:1],
                                      f.transl[:1])
        uv, _ = project(posed, f.K[:1])
        vis = visible_points(posed, f.depth[:1], f.K[:1], threshold=self.options.visibility_threshold)
        scale = max(1, self.subject.image_size[0] // 256)
        return _overlay(self.subject.frame(self.train_ids[0]), uv[0].cpu().numpy(), vis[0].cpu().numpy(), scale)

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


def surface_normals(points: np.ndarray, k: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (unsigned) by local PCA over the k nearest points, and the neighbours."""
    idx = cKDTree(points).query(points, k=k)[1]
    local = points[idx] - points[idx].mean(1, keepdims=True)
    _, vecs = np.linalg.eigh(np.einsum("pki,pkj->pij", local, local))
    return vecs[:, :, 0].astype(np.float32), idx[:, 1:]


def fit_outfit(subject_dir: str | Path, out: str | Path, options: FitOptions,
               progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Fit an outfit to a subject folder and write the results into `out` (see outputs.py)."""
    subject = read_subject(subject_dir)
    return OutfitFitter(subject, Path(out), options, progress, should_stop).run()
