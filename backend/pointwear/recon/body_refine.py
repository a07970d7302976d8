"""The one-image body fit refined on the person's silhouette through the soft rasterizer, after
prepare's keypoint fit and before the garment (docs/recon.md, "The body on the silhouette").

Parameters: residuals of the root orientation (3), body pose (69), betas (S; held when
`body_betas` is off) and translation (3) added to the keypoint fit's. Losses (ReconOptions,
`body_*`), at `body_render_height` px:

    body outside the person mask      sum A (1 - P) / sum P
    person not covered by the body    sum (1 - A) P w / sum P w, w = 1 off the clothing mask (skin,
                                      hair, shoes: the body is right under them), `body_w_cloth`
                                      on it (loose clothing lies off the body), `body_w_skirt` on
                                      it below the hips when the photo shows a skirt or dress
                                      (template.photo_skirt: clothing across the legs' gap)
    keypoints stay                    the SMPL joints' projections near the keypoint fit's (px^2)
    priors                            |d pose|^2, |d betas|^2, |d orient|^2
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from ..body.model import BodyModel
from ..render.rasterizer import project
from ..render.soft import SoftOptions, soft_silhouette
from .options import ReconOptions
from .perceive import Observation
from .refine import crop_view


def _silhouette_loss(alpha: torch.Tensor, person: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """alpha, person, weight (H,W) -> scalar: body outside the person plus weighted person
    pixels the body leaves uncovered, both per person pixel."""
    outside = (alpha * (1 - person)).sum() / person.sum().clamp(min=1)
    miss = ((1 - alpha) * person * weight).sum() / (person * weight).sum().clamp(min=1)
    return outside + miss


def _pixel_weights(obs: Observation, body: BodyModel, view, options: ReconOptions) -> torch.Tensor:
    """(H,W) weight of an uncovered person pixel at the view's size: 1 off the clothing mask,
    `body_w_cloth` on it, `body_w_skirt` on it below the hip joints when the photo shows a skirt
    or dress on the keypoint-fitted body (template.photo_skirt). Runs once, before the steps."""
    from ..body.joints import JOINT_INDEX
    from .template import photo_skirt
    m = view.mask
    weight = torch.where(m > 0.5, torch.full_like(m, options.body_w_cloth), torch.ones_like(m))
    if options.body_w_skirt == options.body_w_cloth:
        return weight
    with torch.no_grad():
        out = body.forward(*obs.pose_tensors(body.device))
        posed = out.vertices[0]
        rest = body.shaped(obs.betas)[0][0]
        hips = project(out.joints[0, [JOINT_INDEX["left_hip"], JOINT_INDEX["right_hip"]]], view.K)[0]
    faces = body.faces.astype(np.int64)
    skirt = photo_skirt(obs, posed.cpu().numpy(), rest.cpu().numpy(), body.weights_np, faces, options)[2]
    if not len(skirt):
        return weight
    rows = torch.arange(m.shape[0], device=m.device, dtype=m.dtype)[:, None]
    lower = (rows > hips[:, 1].max()) & (m > 0.5)
    return torch.where(lower, torch.full_like(m, options.body_w_skirt), weight)


def refine_body(obs: Observation, body: BodyModel, options: ReconOptions) -> tuple[Observation, dict]:
    """The keypoint-fitted body of `obs` moved onto its person silhouette: a new Observation (betas,
    global_orient, body_pose, transl replaced) and stats {seconds, loss_start, loss_end}."""
    o = options
    t0 = time.perf_counter()
    dev = body.device
    view = crop_view(obs, o.body_render_height, dev)
    betas0, go0, bp0, tr0 = obs.pose_tensors(dev)
    weight = _pixel_weights(obs, body, view, o)
    faces = body.faces_t.to(dev)
    with torch.no_grad():
        j2d0 = project(body.forward(betas0, go0, bp0, tr0).joints[0], view.K)[0]
    params = {k: torch.zeros_like(v, requires_grad=True) for k, v in
              (("betas", betas0), ("orient", go0), ("pose", bp0), ("transl", tr0))}
    opt = torch.optim.Adam([{"params": [params["pose"]], "lr": o.body_lr_pose},
                            {"params": [params["orient"]], "lr": o.body_lr_orient},
                            {"params": [params["betas"]], "lr": o.body_lr_betas if o.body_betas else 0.0},
                            {"params": [params["transl"]], "lr": o.body_lr_transl}])
    soft = SoftOptions(sigma=o.body_sigma, cutoff=1e-6)
    losses = []
    for _ in range(o.body_steps):
        opt.zero_grad(set_to_none=True)
        out = body.forward(betas0 + params["betas"], go0 + params["orient"], bp0 + params["pose"],
                           tr0 + params["transl"])
        alpha = soft_silhouette(out.vertices[0], faces, view.K, view.size, soft)[0]
        sil = _silhouette_loss(alpha, view.person, weight)
        keys = (project(out.joints[0], view.K)[0] - j2d0).square().sum(-1).mean() / o.body_joint_px ** 2
        prior = (params["pose"].square().sum() / o.body_pose_sigma ** 2
                 + params["orient"].square().sum() / o.body_orient_sigma ** 2
                 + params["betas"].square().sum() / o.body_betas_sigma ** 2)
        loss = o.body_w_silhouette * sil + o.body_w_joints * keys + o.body_w_prior * prior
        loss.backward()
        opt.step()
        losses.append(sil.detach())
    with torch.no_grad():
        new = {k: (v + params[k]).detach()[0].cpu().numpy() for k, v in
               (("betas", betas0), ("orient", go0), ("pose", bp0), ("transl", tr0))}
    stats = {"seconds": time.perf_counter() - t0,
             "silhouette_start": float(losses[0]) if losses else None,
             "silhouette_end": float(losses[-1]) if losses else None}
    obs = replace(obs, betas=new["betas"].astype(np.float32), global_orient=new["orient"],
                  body_pose=new["pose"], transl=new["transl"])
    return obs, stats
