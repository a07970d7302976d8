"""`pointwear reconstruct IMAGE --out DIR`: one photo -> a textured, lit garment mesh skinned to the
SMPL body, written as a result folder (docs/recon.md).

    perceive_image  (prepare on the one photo: masks, landmarks, body fit, camera)
    body_region_template  (the body surface under the clothing mask)
      or, with --fast, the learned model's one forward pass put on the fitted body (fast.py)
    refine          (offsets, albedo, SH light through the soft rasterizer; skipped by --fast
                     alone, run from the learned mesh by --fast --refine)
    uv_atlas        (xatlas; --fast alone keeps the learned UVs and texture)
    bake_texture    (seen texels / mirror / inpainting, shading divided out)
    write           (outfit.npz + mesh block + texture.png, body.npz, posed.npz, result.json,
                     preview.png, subject/ = the prepared photo)

Everything is written into OUT's hidden partial folder and renamed into place at the end: an error
or a cancel leaves nothing under OUT's name.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..fileio import atomic_path, save_npz
from ..link.protocol import BODY_NPZ, KIND_RECONSTRUCT, OUTFIT_NPZ, POSED_NPZ, RESULT_FILES, RESULT_JSON
from ..perception.prepare import Hooks
from .options import ReconOptions
from .perceive import Observation, perceive_image
from .refine import Refined, refine
from .template import Template, body_region_template
from .texture import Atlas, bake_texture, uv_atlas

DRAPE_ID = "recon:single-image"
GARMENT_NAME = "reconstructed"
SUBJECT_DIR = RESULT_FILES[KIND_RECONSTRUCT]["subject"]
PREVIEW_PNG = RESULT_FILES[KIND_RECONSTRUCT]["preview"]
RECON_FILES = RESULT_FILES[KIND_RECONSTRUCT]


def _check_out(out: Path, image: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise InputError("exists and is not a folder", file=out, field="--out")
        entries = {p.name for p in out.iterdir() if not p.name.startswith(".")}
        if entries and RESULT_JSON not in entries:
            raise InputError("folder is not empty and is not a result folder", file=out, field="--out",
                             hint="write the reconstruction into a new or empty folder")
    if image.parent == out or out in image.parents:
        raise InputError("the output folder must not hold the input image", file=out, field="--out")


def reconstruct(image: str | Path, out: str | Path, *, mask: str | Path | None = None,
                focal: float | None = None, body: str = "default", gender: str = "neutral",
                device: str = "auto", options: ReconOptions | None = None,
                hooks: Hooks | None = None, fast: bool = False, refine_fast: bool = False,
                model_file: str | Path | None = None) -> dict:
    """Run the whole pipeline; returns result.json's content. `fast`: the learned model's one
    forward pass (weights from `model_file`, default the shipped ones) instead of the body-surface
    template, without refinement unless `refine_fast`."""
    options = (options or ReconOptions()).check()
    hooks = hooks or Hooks()
    image, out = Path(image).expanduser().absolute(), Path(out).expanduser().absolute()
    _check_out(out, image)
    if refine_fast and not fast:
        raise InputError("refining the learned result needs --fast", field="--refine")
    if model_file is not None and not fast:
        raise InputError("learned weights are used by --fast only", field="--model")
    net = None
    if fast:   # read before anything is written: a bad model file leaves nothing
        from .learned import load_model
        net = load_model(None if model_file is None else Path(model_file).expanduser().absolute())
    t0 = time.perf_counter()
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        obs = perceive_image(image, partial / SUBJECT_DIR, mask=mask, focal=focal, body=body, gender=gender,
                             device=device, hooks=hooks)
        body_s = 0.0
        if options.body_steps > 0:
            obs, body_s = silhouette_body(obs, body=body, gender=gender, device=device, options=options, hooks=hooks)
        result = build_result(obs, partial, body=body, gender=gender, device=device, options=options, hooks=hooks,
                              net=net, refine_fast=refine_fast, perceive_s=time.perf_counter() - t0 - body_s,
                              body_s=body_s)
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return result


def silhouette_body(obs: Observation, *, body: str, gender: str, device: str, options: ReconOptions,
                    hooks: Hooks) -> tuple[Observation, float]:
    """The keypoint-fitted body refined on the person's silhouette (body_refine.py), written back
    into the prepared subject folder so that every later reader sees the same body; and its
    seconds."""
    from ..body import load_body
    from ..data.subject import SmplParams, update_smpl
    from ..device import pick_device
    from .body_refine import refine_body
    dev = pick_device(device)
    if dev.type == "cpu" and options.threads > 0:
        torch.set_num_threads(options.threads)
    hooks.step("body_silhouette", 0, 1)
    obs, stats = refine_body(obs, load_body(body, gender=gender, device=dev), options)
    subject = update_smpl(obs.subject.root, SmplParams(
        betas=obs.betas, global_orient=obs.global_orient[None], body_pose=obs.body_pose[None], transl=obs.transl[None]))
    hooks.step("body_silhouette", 1, 1)
    return replace(obs, subject=subject), stats["seconds"]


def build_result(obs: Observation, folder: Path, *, body: str = "default", gender: str = "neutral",
                 device: str = "auto", options: ReconOptions, hooks: Hooks, net=None,
                 refine_fast: bool = False, perceive_s: float = 0.0, body_s: float = 0.0) -> dict:
    """Everything after perception, written into `folder`: the garment of `obs` from the body-
    surface template and the refinement, or (`net` given: --fast) from the learned model's one
    forward pass, refined when `refine_fast` (`body_s`: seconds of the body's silhouette
    refinement, already done). Returns result.json's content."""
    from ..body import load_body
    from ..device import pick_device
    t0 = time.perf_counter() - perceive_s - body_s
    dev = pick_device(device)
    if dev.type == "cpu" and options.threads > 0:
        torch.set_num_threads(options.threads)
    model = load_body(body, gender=gender, device=dev)
    seconds = {"perceive": perceive_s, **({"body_silhouette": body_s} if body_s else {})}
    fast = net is not None
    if fast:
        from .fast import learned_prediction, learned_template, place
        pred, seconds["learned"] = learned_prediction(net.to(dev), obs, options)
        template, learned_uv = learned_template(pred, obs, model, options)
        options = replace(options, start_offset=0.0)
    else:
        template = body_region_template(obs, model, options)
    if fast and not refine_fast:
        refined = place(obs, model, template, pred, options, seconds["learned"])
        atlas = Atlas(np.arange(template.num_vertices), template.faces, learned_uv.astype(np.float32))
        texture, tex_stats = pred.texture, {"texels": int(pred.texture.shape[0] * pred.texture.shape[1]),
                                            "source": "learned texture flow"}
    else:
        refined = refine(obs, model, template, options, step=lambda i, n: hooks.step("refine", i, n),
                         preview=hooks.preview)
        seconds["refine"] = refined.seconds
        hooks.step("texture", 0, 1)
        atlas = uv_atlas(refined.rest, template.faces, options.texture_size)
        with torch.no_grad():
            body_verts = obs.posed_body(model)[0]
        texture, tex_stats = bake_texture(refined.rest, refined.posed, template.faces, template.mirror, atlas,
                                          obs.image, obs.mask, obs.K, refined.sh, body_verts,
                                          model.faces_t, options, ring=template.ring)
        hooks.step("texture", 1, 1)
    metrics = input_view_metrics(obs, refined, atlas, texture, model)
    seconds["total"] = time.perf_counter() - t0
    method = ("learned one pass" if fast and not refine_fast else
              "learned one pass + refinement" if fast else "body-surface template + refinement")
    result = write_result(folder, obs, model, template, refined, atlas, texture, options,
                          {**metrics, "texture": tex_stats}, seconds, method)
    hooks.step("write", 1, 1)
    return result


@torch.no_grad()
def render_result(obs: Observation, model, posed: np.ndarray, atlas: Atlas, texture: np.ndarray, sh: np.ndarray,
                  rotation: np.ndarray | None = None, pivot: np.ndarray | None = None,
                  target: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The textured, lit garment (posed (V,3) camera space) re-rendered in the photo's camera,
    hidden where the fitted body is nearer: rgb (H,W,3) float in [0,1] (0 off the garment) and the
    visible mask (H,W) bool. With `rotation` (3,3), garment and body are first turned about
    `pivot` (3,) and moved to `target` (3,): a novel view of the same person."""
    from ..render.soft import render_textured
    dev = model.device
    t = lambda a, d=torch.float32: torch.as_tensor(a, dtype=d, device=dev)  # noqa: E731
    verts = t(posed)[t(atlas.vmapping, torch.long)]
    body_verts = obs.posed_body(model)[0]
    if rotation is not None:
        R, c, d = t(rotation), t(pivot), t(target)
        verts, body_verts = ((v - c) @ R.T + d for v in (verts, body_verts))
    rgb, vis, _ = render_textured(verts, t(atlas.faces, torch.long), t(atlas.uv), t(texture).permute(2, 0, 1) / 255,
                                  t(obs.K), obs.size, sh=t(sh), occluder=(body_verts, model.faces_t))
    return rgb[0].clamp(0, 1).cpu().numpy(), vis[0].cpu().numpy()


def input_view_metrics(obs: Observation, refined: Refined, atlas: Atlas, texture: np.ndarray, model) -> dict:
    """Mask IoU of the re-rendered garment against the clothing mask, in the photo."""
    _, vis = render_result(obs, model, refined.posed, atlas, texture, refined.sh)
    inter = (vis & obs.mask).sum()
    union = (vis | obs.mask).sum()
    return {"input_iou": round(float(inter / max(union, 1)), 4)}


def write_result(folder: Path, obs: Observation, model, template: Template, refined: Refined,
                 atlas: Atlas, texture: np.ndarray, options: ReconOptions, metrics: dict,
                 seconds: dict, method: str = "body-surface template + refinement") -> dict:
    """outfit.npz (+ mesh block, texture.png), body.npz, posed.npz, result.json, preview.png."""
    from PIL import Image

    from ..body.export import export_body
    from ..fit.outputs import write_posed
    from ..mesh.result_mesh import GarmentMesh, write_result_mesh
    params = {"method": method, "sh": refined.sh.tolist()}
    save_npz(folder / OUTFIT_NPZ, points=refined.rest, weights=template.weights,
             faces=template.faces.astype(np.int32), garment=np.zeros(len(refined.rest), np.int32),
             garment_names=np.array(json.dumps([GARMENT_NAME])), code=np.zeros(0, np.float32),
             drape=np.array(DRAPE_ID), betas=obs.betas.astype(np.float32), params=np.array(json.dumps(params)),
             body=np.array(str(obs.subject.meta.get("body", "default"))),
             gender=np.array(str(obs.subject.meta.get("gender", "neutral"))), offsets=refined.offsets,
             body_vertex=template.body_vertex.astype(np.int32), sh=refined.sh,
             atlas_point=atlas.vmapping.astype(np.int32))
    write_posed(folder / POSED_NPZ, model, obs.subject, refined.posed[None], obs.betas)
    export_body(model, folder / BODY_NPZ, obs.betas)
    rgb, vis = render_result(obs, model, refined.posed, atlas, texture, refined.sh)
    preview = np.where(vis[..., None], rgb, obs.image / 255.0 * 0.35)
    with atomic_path(folder / PREVIEW_PNG) as tmp:
        Image.fromarray((preview * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")
    result = {
        "drape": DRAPE_ID, "method": method, "source": obs.image_file, "mask": obs.mask_file,
        "garments": [{"index": 0, "name": GARMENT_NAME, "slot": "outfit", "layer": 0, "label": None,
                      "label_name": None}],
        "points": int(len(refined.rest)), "faces": int(len(template.faces)),
        "mesh_vertices": int(len(atlas.vmapping)), "metrics": metrics, "sh": [round(float(c), 5) for c in refined.sh],
        "seconds": {k: round(v, 2) for k, v in seconds.items()}, "history": refined.history,
        "options": asdict(options),
    }
    with atomic_path(folder / RESULT_JSON) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    write_result_mesh(folder, GarmentMesh(refined.rest[atlas.vmapping], atlas.faces.astype(np.int32),
                                          template.weights[atlas.vmapping],
                                          np.zeros(len(atlas.vmapping), np.int32), atlas.uv, texture))
    from ..mesh.export import export_result   # garment.glb (skinned, textured) and garment.obj + mtl + png
    for fmt, name in (("glb", RECON_FILES["glb"]), ("obj", RECON_FILES["obj"])):
        export_result(folder, fmt, folder / name, warn=lambda msg: None)
    return json.loads((folder / RESULT_JSON).read_text())
