#!/usr/bin/env python
"""Train the `neural` drape model as an auto-decoder: one learned 8-D code per training outfit
plus the network, on synthetic outfits from the garment generator (all kinds, random
parameters, folds and uneven hems, varied body shapes) and optionally on a copy of CLOTH3D.

Loss per step: 3D Chamfer between predicted and true rest-pose clothing points (random subsets
of both), the same after posing both with a random pose (each with its own skin weights), a prior
on the code norm and a penalty on the offsets from the body. The dataset is generated once and
cached (`--cache`, outside git); training checkpoints periodically and `--resume`s; at the end the
network is frozen and codes are fitted to held-out outfits to report their Chamfer distance.

    .venv/bin/python scripts/train_drape.py                       # the committed default weights
    .venv/bin/python scripts/train_drape.py --cloth3d ~/CLOTH3D/train --body ~/smpl/SMPL_FEMALE.pkl
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from pointwear.body import BodyModel, load_body  # noqa: E402
from pointwear.drape.neural import (DEFAULT_CHECKPOINT, NeuralDrape, NeuralDrapeConfig,  # noqa: E402
                                    body_fingerprint, project_to_ball, save_neural_drape)
from pointwear.errors import InputError  # noqa: E402

KINDS = ("tshirt-shorts", "longsleeve-trousers", "tank-skirt", "dress")
TOP_K = 4   # skin weights kept per truth point (joint index + weight)


# == data ==========================================================================================
@dataclass
class OutfitSet:
    """Rest-pose truth clothing of many outfits: points (N, K, 3) for their betas (N, S), with
    top-4 skin weights per point, the outfit kind (index into `kinds`) and a source label."""
    points: np.ndarray
    weight_idx: np.ndarray     # (N, K, 4) uint8
    weight_val: np.ndarray     # (N, K, 4) float16, rows sum to 1
    betas: np.ndarray
    kind: np.ndarray
    kinds: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.points)

    @staticmethod
    def concat(sets: list["OutfitSet"]) -> "OutfitSet":
        sets = [s for s in sets if len(s)]
        kinds = tuple(dict.fromkeys(k for s in sets for k in s.kinds))
        remap = [np.array([kinds.index(k) for k in s.kinds], dtype=np.int16) for s in sets]
        return OutfitSet(np.concatenate([s.points for s in sets]), np.concatenate([s.weight_idx for s in sets]),
                         np.concatenate([s.weight_val for s in sets]), np.concatenate([s.betas for s in sets]),
                         np.concatenate([r[s.kind] for r, s in zip(remap, sets)]), kinds)

    def save(self, path: Path) -> None:
        from pointwear.fileio import save_npz
        save_npz(path, compressed=False, points=self.points, weight_idx=self.weight_idx,
                 weight_val=self.weight_val, betas=self.betas, kind=self.kind, kinds=np.array(self.kinds))

    @staticmethod
    def load(path: Path) -> "OutfitSet":
        with np.load(path) as z:
            return OutfitSet(z["points"], z["weight_idx"], z["weight_val"], z["betas"], z["kind"],
                             tuple(str(k) for k in z["kinds"]))


def top_weights(weights: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(-weights, axis=1)[:, :k]
    val = np.take_along_axis(weights, idx, 1)
    val = val / val.sum(1, keepdims=True)
    return idx.astype(np.uint8), val.astype(np.float16)


def dense_weights(idx: torch.Tensor, val: torch.Tensor, joints: int = 24) -> torch.Tensor:
    out = torch.zeros(*idx.shape[:-1], joints, dtype=torch.float32, device=idx.device)
    return out.scatter_add_(-1, idx.long(), val.float())


def sample_betas(rng: np.random.Generator, num_betas: int) -> np.ndarray:
    """Like the synthetic subjects: the first four shape terms ~ N(0, 0.8), clipped to +-2."""
    betas = np.zeros(num_betas)
    n = min(4, num_betas)
    betas[:n] = np.clip(rng.normal(0, 0.8, n), -2, 2)
    return betas


_WORKER_BODY: BodyModel | None = None


def _init_worker(body_spec: str) -> None:
    global _WORKER_BODY
    torch.set_num_threads(1)
    _WORKER_BODY = load_body(body_spec, device="cpu")


def make_outfit(index: int, seed: int, count: int, body: BodyModel | None = None) -> dict:
    """One synthetic outfit (deterministic in seed and index): truth points on its surface."""
    from pointwear.garment.body_frame import BodyFrame
    from pointwear.garment.outfit import Detail, build_outfit, sample_outfit
    from pointwear.synth.generate import sample_surface
    body = body or _WORKER_BODY
    rng = np.random.default_rng([seed, index])
    kind = KINDS[index % len(KINDS)]
    betas = sample_betas(rng, body.num_betas)
    with torch.no_grad():
        verts, joints = (t[0].cpu().numpy() for t in body.shaped(betas))
    frame = BodyFrame(verts, joints, body.weights_np)
    params, names = sample_outfit(kind, rng)
    detail = Detail(wrinkle_amp=float(rng.uniform(0.003, 0.008)), hem_asym=float(rng.uniform(0.01, 0.03)),
                    seed=int(rng.integers(2**31)))
    with torch.no_grad():
        mesh = build_outfit(frame, params, names, detail)
    rest = mesh.vertices.detach().cpu().numpy().astype(np.float64)
    face, bary = sample_surface(rest, mesh.faces, count, rng)
    corners = mesh.faces[face]
    points = np.einsum("pk,pkc->pc", bary, rest[corners])
    weights = np.einsum("pk,pkc->pc", bary, mesh.weights[corners])
    idx, val = top_weights(weights)
    return {"points": points.astype(np.float32), "weight_idx": idx, "weight_val": val,
            "betas": betas.astype(np.float32), "kind": KINDS.index(kind)}


def synthetic_outfits(cache: Path, body_spec: str, body: BodyModel, n: int, seed: int, count: int,
                      workers: int, label: str, shard: int = 100) -> OutfitSet:
    """Generate (once, cached in shards under `cache`) n synthetic outfits."""
    if n <= 0:
        return OutfitSet(np.zeros((0, count, 3), np.float32), np.zeros((0, count, TOP_K), np.uint8),
                         np.zeros((0, count, TOP_K), np.float16), np.zeros((0, body.num_betas), np.float32),
                         np.zeros(0, np.int16), KINDS)
    from tqdm import tqdm
    fp = body_fingerprint(body)["template_sha1"][:10]
    folder = cache / f"synth-{label}-s{seed}-k{count}-{fp}"
    folder.mkdir(parents=True, exist_ok=True)
    shards = [(s, min(s + shard, n)) for s in range(0, n, shard)]
    todo = [(a, b) for a, b in shards if not (folder / f"shard_{a:06d}_{b:06d}.npz").exists()]
    bar = tqdm(total=n, initial=n - sum(b - a for a, b in todo), desc=f"outfits ({label})", unit="outfit",
               dynamic_ncols=True, mininterval=5)
    pool = None
    if todo and workers > 1:
        import multiprocessing as mp
        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(body_spec,))
    try:
        for a, b in todo:
            args = [(i, seed, count) for i in range(a, b)]
            if pool is not None:
                items = []
                for item in pool.imap(_make_star, args, chunksize=4):
                    items.append(item)
                    bar.update(1)
            else:
                items = []
                for i in range(a, b):
                    items.append(make_outfit(i, seed, count, body))
                    bar.update(1)
            OutfitSet(np.stack([it["points"] for it in items]), np.stack([it["weight_idx"] for it in items]),
                      np.stack([it["weight_val"] for it in items]), np.stack([it["betas"] for it in items]),
                      np.array([it["kind"] for it in items], np.int16), KINDS
                      ).save(folder / f"shard_{a:06d}_{b:06d}.npz")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        bar.close()
    return OutfitSet.concat([OutfitSet.load(folder / f"shard_{a:06d}_{b:06d}.npz") for a, b in shards])


def _make_star(args):
    return make_outfit(*args)


def cloth3d_outfits(root: Path, cache: Path, body: BodyModel, count: int, frames: int,
                    limit: int | None) -> tuple[OutfitSet, list[int]]:
    """CLOTH3D sequences (one outfit each), unposed to the rest pose for their betas from a few
    frames, cached per sequence. The body should be the SMPL model CLOTH3D used (`--body`)."""
    from tqdm import tqdm

    from pointwear.data.cloth3d import find_sequences, rest_pose_samples
    sequences = find_sequences(root)
    if limit:
        sequences = sequences[:limit]
    fp = body_fingerprint(body)["template_sha1"][:10]
    folder = cache / f"cloth3d-k{count}-f{frames}-{fp}"
    folder.mkdir(parents=True, exist_ok=True)
    sets = []
    for seq in tqdm(sequences, desc="cloth3d sequences", unit="seq", dynamic_ncols=True, mininterval=5):
        path = folder / f"{seq.name}.npz"
        if not path.exists():
            samples = rest_pose_samples(seq, body, count=count, frames=frames,
                                        rng=np.random.default_rng(zlib.crc32(seq.name.encode())))
            kinds = tuple(sorted({s.kind for s in samples}))
            pts = np.stack([s.points for s in samples])
            idx, val = zip(*(top_weights(s.weights) for s in samples))
            OutfitSet(pts.astype(np.float32), np.stack(idx), np.stack(val),
                      np.stack([s.betas for s in samples]).astype(np.float32),
                      np.array([kinds.index(s.kind) for s in samples], np.int16), kinds).save(path)
        sets.append(OutfitSet.load(path))
    # Frames of one sequence share one code: they are the same outfit.
    return OutfitSet.concat(sets), [len(s) for s in sets]


# == losses ========================================================================================
def chamfer(a: torch.Tensor, b: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """Per-batch symmetric 3D Chamfer (mean of both directions' mean nearest distance), (B,).
    Nearest neighbours are found without autograd; only the matched pairs carry gradients."""
    with torch.no_grad():
        ab, ba = [], []
        for s in range(0, a.shape[0], chunk):
            d = torch.cdist(a[s:s + chunk].detach(), b[s:s + chunk].detach())
            ab.append(d.min(2).indices)                                 # min is faster than argmin
            ba.append(d.transpose(1, 2).contiguous().min(2).indices)
        ab, ba = torch.cat(ab), torch.cat(ba)
    b_near = torch.gather(b, 1, ab[..., None].expand(-1, -1, 3))
    a_near = torch.gather(a, 1, ba[..., None].expand(-1, -1, 3))
    d_ab = (a - b_near).square().sum(-1).add(1e-10).sqrt()
    d_ba = (b - a_near).square().sum(-1).add(1e-10).sqrt()
    return 0.5 * (d_ab.mean(1) + d_ba.mean(1))


def skin(points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning (same maths as pointwear.body.skin_points, elementwise: faster on CPU
    for the training loss)."""
    batch = transforms.shape[0]
    per_point = torch.matmul(weights, transforms.reshape(batch, 24, 16)).reshape(*points.shape[:2], 4, 4)
    return (per_point[..., :3, :3] * points[..., None, :]).sum(-1) + per_point[..., :3, 3]


def chamfer_cm_full(a: torch.Tensor, b: torch.Tensor, block: int = 2048) -> tuple[float, float]:
    """Exact symmetric Chamfer of two point sets (P, 3), (Q, 3) in cm, blockwise: (mean, f@1cm)."""
    def one_way(x, y):
        best = torch.cat([torch.cdist(x[i:i + block], y).min(1).values for i in range(0, len(x), block)])
        return best
    ab, ba = one_way(a, b), one_way(b, a)
    cd = 50.0 * (ab.mean() + ba.mean())
    precision, recall = (ab < 0.01).float().mean(), (ba < 0.01).float().mean()
    f = 2 * precision * recall / (precision + recall).clamp_min(1e-9)
    return float(cd), float(f)


def random_poses(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 72) poses like the synthetic subjects': T-pose, relaxed A-pose or a walking frame."""
    from pointwear.synth.motion import relaxed_pose, walk
    out = np.zeros((n, 24, 3))
    for i in range(n):
        r = rng.uniform()
        if r < 0.15:
            continue
        if r < 0.5:
            out[i] = relaxed_pose(1, rng)[0]
        else:
            _, poses = walk(8, rng)
            out[i] = poses[rng.integers(8)]
    out[:, 0] = 0.0   # global orientation is rigid: irrelevant to the Chamfer
    return out.reshape(n, 72).astype(np.float32)


_POSE_BANK: dict[int, np.ndarray] = {}


def pose_bank(seed: int = 0, size: int = 2048) -> np.ndarray:
    """A fixed bank of random poses, drawn once (scipy rotations are slow per step)."""
    if seed not in _POSE_BANK:
        _POSE_BANK[seed] = random_poses(size, np.random.default_rng([seed, 12345]))
    return _POSE_BANK[seed]


@dataclass
class LossWeights:
    posed: float = 0.5
    offset: float = 0.02
    code: float = 1e-4


def step_loss(model: NeuralDrape, codes: torch.Tensor, data: OutfitSet, ids: np.ndarray,
              rng: np.random.Generator, body_subset: int, truth_subset: int, w: LossWeights
              ) -> tuple[torch.Tensor, dict]:
    """Loss of one batch of outfits `ids` with their codes (B, 8)."""
    device = codes.device
    P = model.num_points
    subset = torch.as_tensor(np.sort(rng.choice(P, size=min(body_subset, P), replace=False)), device=device)
    K = data.points.shape[1]
    pick = np.stack([rng.choice(K, size=min(truth_subset, K), replace=False) for _ in ids])
    truth = torch.as_tensor(data.points[ids[:, None], pick], device=device)
    betas = torch.as_tensor(data.betas[ids], device=device)
    points, weights, base = model.decode(codes, betas, subset)
    rest = chamfer(points, truth)
    loss = rest.mean()
    stats = {"rest_cm": 100 * float(rest.detach().mean())}
    if w.posed > 0:
        bank = pose_bank()
        pose = torch.as_tensor(bank[rng.integers(len(bank), size=len(ids))], device=device)
        transforms = model.body.joint_transforms(model.body.betas_tensor(betas), pose)
        truth_w = dense_weights(torch.as_tensor(data.weight_idx[ids[:, None], pick], device=device),
                                torch.as_tensor(data.weight_val[ids[:, None], pick], device=device))
        posed = chamfer(skin(points, weights, transforms), skin(truth, truth_w, transforms))
        loss = loss + w.posed * posed.mean()
        stats["posed_cm"] = 100 * float(posed.detach().mean())
    if w.offset > 0:
        loss = loss + w.offset * (points - base).square().sum(-1).mean()
    if w.code > 0:
        loss = loss + w.code * project_to_ball(codes).square().sum(-1).mean()
    stats["loss"] = float(loss.detach())
    return loss, stats


# == training ======================================================================================
@dataclass
class TrainOptions:
    steps: int = 40000
    minutes: float = 32.0           # > 0: also stop (and finish the schedule) at this wall time
    batch: int = 8
    body_subset: int = 1024
    truth_subset: int = 1024
    lr: float = 2e-3
    lr_final: float = 5e-5
    code_lr: float = 2e-2
    code_init: float = 0.1
    seed: int = 0
    checkpoint_minutes: float = 3.0
    log_every: int = 50


def train(model: NeuralDrape, data: OutfitSet, opts: TrainOptions, weights: LossWeights,
          groups: list[int] | None = None, state_path: Path | None = None, resume: bool = False,
          log=None) -> dict:
    """Auto-decoder training. `groups` (sizes summing to len(data)) share one code per group
    (frames of one CLOTH3D sequence); by default each outfit has its own code."""
    from tqdm import tqdm
    groups = groups or [1] * len(data)
    code_of = code_of_outfits(groups)
    gen = torch.Generator().manual_seed(opts.seed)
    codes = torch.nn.Embedding(len(groups), model.code_dim, sparse=True)
    with torch.no_grad():
        codes.weight.copy_(torch.randn(len(groups), model.code_dim, generator=gen) * opts.code_init)
    net_params = [p for n, p in model.named_parameters() if not n.startswith("body.")]
    for p in model.body.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(net_params, lr=opts.lr)
    opt_codes = torch.optim.SparseAdam(list(codes.parameters()), lr=opts.code_lr)
    rng = np.random.default_rng(opts.seed)
    step, elapsed_before, history = 0, 0.0, []
    if resume and state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)   # never runs pickled code
        model.load_state_dict(state["model"], strict=False)
        codes.load_state_dict(state["codes"])
        opt.load_state_dict(state["opt"])
        opt_codes.load_state_dict(state["opt_codes"])
        rng.bit_generator.state = state["rng"]
        step, elapsed_before, history = state["step"], state["elapsed"], state["history"]
        print(f"resumed from {state_path} at step {step} ({elapsed_before / 60:.1f} min)", flush=True)

    def save_state() -> None:
        if state_path is None:
            return
        from pointwear.fileio import atomic_path
        with atomic_path(state_path) as tmp:
            torch.save({"model": model.state_dict(), "codes": codes.state_dict(), "opt": opt.state_dict(),
                        "opt_codes": opt_codes.state_dict(), "rng": rng.bit_generator.state, "step": step,
                        "elapsed": elapsed_before + time.time() - start, "history": history}, tmp)

    model.train()
    start = time.time()
    last_ckpt = start
    order = np.zeros(0, dtype=np.int64)
    window: list[dict] = []
    bar = tqdm(total=opts.steps, initial=step, desc="train", unit="step", dynamic_ncols=True, mininterval=10)
    while True:
        elapsed = elapsed_before + time.time() - start
        progress = step / opts.steps
        if opts.minutes > 0:
            progress = max(progress, elapsed / (60 * opts.minutes))
        if progress >= 1.0:
            break
        lr = opts.lr_final + 0.5 * (opts.lr - opts.lr_final) * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
        for g in opt_codes.param_groups:
            g["lr"] = opts.code_lr * lr / opts.lr
        if len(order) < opts.batch:
            order = np.concatenate([order, rng.permutation(len(data))])
        ids, order = order[:opts.batch], order[opts.batch:]
        code_ids = code_of[ids]
        batch_codes = codes(code_ids)
        loss, stats = step_loss(model, batch_codes, data, ids, rng, opts.body_subset, opts.truth_subset, weights)
        opt.zero_grad(set_to_none=True)
        opt_codes.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        opt_codes.step()
        step += 1
        bar.update(1)
        window.append(stats)
        if step % opts.log_every == 0:
            mean = {k: float(np.mean([s[k] for s in window])) for k in window[0]}
            mean.update(step=step, minutes=round((elapsed_before + time.time() - start) / 60, 2), lr=lr)
            history.append(mean)
            window = []
            bar.set_postfix(rest_cm=f"{mean['rest_cm']:.2f}", posed_cm=f"{mean.get('posed_cm', 0):.2f}")
            if log:
                log(mean)
        if time.time() - last_ckpt > 60 * opts.checkpoint_minutes:
            save_state()
            last_ckpt = time.time()
    bar.close()
    save_state()
    with torch.no_grad():
        model.train_codes = project_to_ball(codes.weight.detach()).clone()
    model.eval()
    return {"steps": step, "minutes": (elapsed_before + time.time() - start) / 60, "history": history}


# == held-out evaluation ===========================================================================
def fit_codes(model: NeuralDrape, data: OutfitSet, restarts: int = 3, steps: int = 250, lr: float = 0.05,
              body_subset: int = 1024, truth_subset: int = 1024, seed: int = 1) -> torch.Tensor:
    """Fit one code per outfit of `data` with the network frozen (rest-pose Chamfer, Adam with the
    paper's settings, several random starts, the best kept). Returns (N, 8) codes in the ball."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    n = len(data)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n), restarts)
    code = model.random_codes(len(ids), generator=gen).clone().requires_grad_(True)
    opt = torch.optim.Adam([code], lr=lr, betas=(0.5, 0.9), eps=1e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.992)
    for _ in range(steps):
        loss, _ = step_loss(model, code, data, ids, rng, body_subset, truth_subset, LossWeights(0.0, 0.0, 1e-4))
        opt.zero_grad()
        (loss * len(ids)).backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        scores = []
        sub = torch.as_tensor(np.sort(rng.choice(model.num_points, 4096, replace=False)))
        for i, k in enumerate(ids):
            pts = model(code[i:i + 1], torch.as_tensor(data.betas[k:k + 1]), subset=sub).points[0]
            truth = torch.as_tensor(data.points[k][rng.choice(data.points.shape[1], 4096, replace=False)])
            scores.append(chamfer_cm_full(pts, truth)[0])
        best = torch.as_tensor(scores).view(n, restarts).argmin(1)
        chosen = project_to_ball(code.detach().view(n, restarts, -1)[torch.arange(n), best])
    return chosen


def code_of_outfits(groups: list[int]) -> torch.Tensor:
    return torch.as_tensor(np.repeat(np.arange(len(groups)), groups))


def evaluate(model: NeuralDrape, data: OutfitSet, codes: torch.Tensor, limit: int | None = None) -> dict:
    """Full-resolution Chamfer (cm) and F-score at 1 cm of each outfit (the first `limit`, spread
    over the set), per kind, and of the naked-body baseline (the body samples as the clothing)."""
    rows = []
    picks = range(len(data)) if not limit or limit >= len(data) else np.linspace(0, len(data) - 1, limit).astype(int)
    with torch.no_grad():
        for i in picks:
            betas = torch.as_tensor(data.betas[i:i + 1])
            pts = model(codes[i:i + 1], betas).points[0]
            truth = torch.as_tensor(data.points[i])
            cd, f = chamfer_cm_full(pts, truth)
            body_cd, body_f = chamfer_cm_full(model.body_points(betas)[0][0], truth)
            rows.append({"kind": data.kinds[int(data.kind[i])], "chamfer_cm": cd, "fscore_1cm": f,
                         "body_chamfer_cm": body_cd, "body_fscore_1cm": body_f})
    summary = {"n": len(rows)}
    for key in ("chamfer_cm", "fscore_1cm", "body_chamfer_cm", "body_fscore_1cm"):
        summary[key] = float(np.mean([r[key] for r in rows]))
    summary["per_kind"] = {k: {"n": sum(r["kind"] == k for r in rows),
                               "chamfer_cm": float(np.mean([r["chamfer_cm"] for r in rows if r["kind"] == k])),
                               "body_chamfer_cm": float(np.mean([r["body_chamfer_cm"] for r in rows
                                                                  if r["kind"] == k]))}
                           for k in dict.fromkeys(r["kind"] for r in rows)}
    return summary


# == command line ==================================================================================
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint to write")
    ap.add_argument("--cache", type=Path, default=ROOT / "out" / "drape_cache",
                    help="dataset cache and training state (outside git)")
    ap.add_argument("--body", default="default", help="body model: 'default' or a SMPL file")
    ap.add_argument("--outfits", type=int, default=2000, help="synthetic training outfits")
    ap.add_argument("--eval-outfits", type=int, default=32, help="held-out synthetic outfits")
    ap.add_argument("--truth-points", type=int, default=4096, help="truth points cached per outfit")
    ap.add_argument("--cloth3d", type=Path, default=None, help="a copy of CLOTH3D (or one split of it)")
    ap.add_argument("--cloth3d-frames", type=int, default=4, help="frames unposed per CLOTH3D sequence")
    ap.add_argument("--cloth3d-limit", type=int, default=0, help="use at most this many sequences (0: all)")
    ap.add_argument("--workers", type=int, default=2, help="processes generating outfits")
    ap.add_argument("--points", type=int, default=NeuralDrapeConfig.points)
    ap.add_argument("--width", type=int, default=NeuralDrapeConfig.width)
    ap.add_argument("--layers", type=int, default=NeuralDrapeConfig.layers)
    ap.add_argument("--template-hidden", type=int, default=NeuralDrapeConfig.template_hidden)
    ap.add_argument("--steps", type=int, default=TrainOptions.steps)
    ap.add_argument("--minutes", type=float, default=TrainOptions.minutes,
                    help="wall-time budget of the training loop (0: steps only)")
    ap.add_argument("--batch", type=int, default=TrainOptions.batch)
    ap.add_argument("--body-subset", type=int, default=TrainOptions.body_subset,
                    help="body points decoded per step")
    ap.add_argument("--truth-subset", type=int, default=TrainOptions.truth_subset,
                    help="truth points per outfit per step")
    ap.add_argument("--lr", type=float, default=TrainOptions.lr)
    ap.add_argument("--code-lr", type=float, default=TrainOptions.code_lr)
    ap.add_argument("--posed-weight", type=float, default=LossWeights.posed)
    ap.add_argument("--offset-weight", type=float, default=LossWeights.offset)
    ap.add_argument("--code-weight", type=float, default=LossWeights.code)
    ap.add_argument("--eval-steps", type=int, default=250, help="Adam steps fitting held-out codes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default); 1 is fastest when the cores are shared")
    ap.add_argument("--data-only", action="store_true", help="generate and cache the data, then stop")
    ap.add_argument("--resume", action="store_true", help="continue from the training state in --cache")
    ap.add_argument("--checkpoint-minutes", type=float, default=TrainOptions.checkpoint_minutes)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    body = load_body(args.body, device="cpu")
    cache = args.cache.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    run_dir = cache / "run"
    run_dir.mkdir(exist_ok=True)
    log_path = run_dir / "history.jsonl"

    sets, groups = [], []
    synth = synthetic_outfits(cache, args.body, body, args.outfits, args.seed, args.truth_points,
                              args.workers, "train")
    sets.append(synth)
    groups += [1] * len(synth)
    if args.cloth3d is not None:
        c3d, c3d_groups = cloth3d_outfits(args.cloth3d.expanduser(), cache, body, args.truth_points,
                                          args.cloth3d_frames, args.cloth3d_limit or None)
        sets.append(c3d)
        groups += c3d_groups
    data = OutfitSet.concat(sets)
    if not len(data):
        raise InputError("no training outfits: give --outfits > 0 or --cloth3d DIR")
    held_out = synthetic_outfits(cache, args.body, body, args.eval_outfits, args.seed + 7919, 8192,
                                 args.workers, "eval")
    data_minutes = (time.time() - t0) / 60
    print(f"data: {len(data)} training outfits ({len(groups)} codes), {len(held_out)} held out, "
          f"{data_minutes:.1f} min", flush=True)
    if args.data_only:
        return 0

    config = NeuralDrapeConfig(points=args.points, width=args.width, layers=args.layers,
                               template_hidden=args.template_hidden)
    torch.manual_seed(args.seed)
    model = NeuralDrape(body, config)
    print(f"model: {model.parameter_count()} parameters, P={config.points}, width {config.width}, "
          f"{config.layers} modulated layers", flush=True)
    opts = TrainOptions(steps=args.steps, minutes=args.minutes, batch=args.batch, lr=args.lr,
                        body_subset=args.body_subset, truth_subset=args.truth_subset,
                        code_lr=args.code_lr, seed=args.seed, checkpoint_minutes=args.checkpoint_minutes)
    weights = LossWeights(args.posed_weight, args.offset_weight, args.code_weight)

    def log(row: dict) -> None:
        with open(log_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    if not args.resume and log_path.exists():
        log_path.unlink()
    result = train(model, data, opts, weights, groups, run_dir / "train_state.pt", args.resume, log)
    tail = result["history"][-10:] or [{}]
    final = {k: float(np.mean([h[k] for h in tail if k in h])) for k in ("loss", "rest_cm", "posed_cm")
             if any(k in h for h in tail)}
    print(f"trained {result['steps']} steps in {result['minutes']:.1f} min; last: {final}", flush=True)

    t1 = time.time()
    evaluation = {}
    if len(held_out):
        fitted = fit_codes(model, held_out, steps=args.eval_steps, seed=args.seed + 1)
        evaluation = evaluate(model, held_out, fitted)
        print(f"held-out ({len(held_out)} outfits, codes fitted with the network frozen): "
              f"Chamfer {evaluation['chamfer_cm']:.2f} cm (naked body {evaluation['body_chamfer_cm']:.2f} cm), "
              f"F@1cm {evaluation['fscore_1cm']:.3f}", flush=True)
        for kind, row in evaluation["per_kind"].items():
            print(f"  {kind:20s} {row['chamfer_cm']:.2f} cm (body {row['body_chamfer_cm']:.2f} cm)", flush=True)
    train_eval = evaluate(model, data, model.train_codes[code_of_outfits(groups)], limit=32)
    print(f"training outfits (their learned codes, full resolution): Chamfer {train_eval['chamfer_cm']:.2f} cm, "
          f"F@1cm {train_eval['fscore_1cm']:.3f}", flush=True)
    for p in model.parameters():
        p.requires_grad_(True)
    meta = {"command": "scripts/train_drape.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "outfits": len(data), "codes": len(groups), "cloth3d": str(args.cloth3d) if args.cloth3d else None,
            "steps": result["steps"], "train_minutes": round(result["minutes"], 2),
            "data_minutes": round(data_minutes, 2), "eval_minutes": round((time.time() - t1) / 60, 2),
            "final_train": final, "train_outfits": train_eval, "held_out": evaluation,
            "options": asdict(opts), "loss_weights": asdict(weights),
            "torch": str(torch.__version__), "threads": torch.get_num_threads()}
    save_neural_drape(model, args.out, meta)
    with open(run_dir / "summary.json", "w") as fh:
        json.dump(meta, fh, indent=2)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB); total {(time.time() - t0) / 60:.1f} min",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
