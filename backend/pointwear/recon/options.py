"""Every tuning number of `pointwear reconstruct` in one options object (the user's choices are the
CLI flags; the loss weights follow 3D Magic Mirror's where the loss is the same)."""
from __future__ import annotations

from dataclasses import dataclass

MIN_PERSON_HEIGHT_PX = 128      # a person shorter than this in the photo is refused


@dataclass(frozen=True)
class ReconOptions:
    # -- template: the body surface under the clothing mask ----------------------------------
    render_height: int = 320          # px: the person's box is rendered this tall while refining
    mask_dilate_px: int = 2           # body vertices projecting this close to the mask are garment
    start_offset: float = 0.07        # m: the template starts this far outside the body (a constant
                                      # ease: what the unseen side keeps; chosen on the tuning seeds
                                      # 0-17: 0.03 ... 0.08, see docs/recon.md)
    skirt_start_offset: float = 0.04  # m: ... on a template whose legs are bridged (skirts, dresses;
                                      # tuning 0.03 ... 0.06: the stadium already adds volume)
    arm_ease_ratio: float = 0.5       # the arms (by skin weight) start at this share of start_offset
                                      # (sleeves hug the arm: tuning truth 1-4 cm; 1, 0.5, 0.33 tried)
    limb_prefix: bool = True          # sleeves and trouser legs are tubes from the torso: a limb's
                                      # garment ends at its first bare cross-sections (template.py)
    ring_bin: float = 0.03            # m: cross-section rings bin a bone's vertices this finely
    bridge_legs: bool = True          # a skirt or dress (clothing across the gap between the legs
                                      # in the photo) joins the two leg tubes into one (bridge.py)
    bridge_gap: float = 0.08          # m: ... across a gap between the body's legs this wide
    bridge_flare: float = 0.16        # m: ... or (a side view) with this much clothing off the body
                                      # on the row through the legs (0: off; tuning seeds 0-17:
                                      # trousers <= 12 cm, skirts 20-50 cm at the knees)
    bridge_min_levels: int = 2        # ... on at least this many leg levels
    skirt_hem: bool = True            # a bridged skirt ends at its hem in the photo, not where the
                                      # legs hidden behind its front end (bridge.hem_level)
    min_faces: int = 50               # fewer garment faces than this: the mask misses the body
    # -- the body on the person's silhouette (body_refine.py), before the template ------------
    body_steps: int = 0               # Adam steps (0: keep prepare's keypoint fit)
    body_render_height: int = 192     # px: the person's box is rendered this tall
    body_sigma: float = 0.5           # soft silhouette softness, px^2 at that height
    body_w_cloth: float = 0.3         # weight of uncovered clothing-mask pixels (skin, hair: 1)
    body_w_skirt: float = 0.3         # ... of those below the hips when the photo shows a skirt
                                      # or dress (template.photo_skirt); tuning: docs/recon.md
    body_betas: bool = True           # betas refined too (off: pose, root and translation only)
    body_w_silhouette: float = 1.0
    body_w_joints: float = 0.1        # joints' projections stay near the keypoint fit's ...
    body_joint_px: float = 3.0        # ... within about this many px (at body_render_height)
    body_w_prior: float = 0.01
    body_pose_sigma: float = 0.3      # rad per body_pose component
    body_orient_sigma: float = 0.3    # rad
    body_betas_sigma: float = 1.0
    body_lr_pose: float = 0.01
    body_lr_orient: float = 0.01
    body_lr_betas: float = 0.03
    body_lr_transl: float = 0.005     # m
    # -- refinement (per-vertex offsets, albedo, light) -----------------------------------------
    steps: int = 80
    smooth_passes: int = 6            # Laplacian smoothing of the raw offset parameters
    lr_offsets: float = 2e-3
    lr_albedo: float = 2e-2
    lr_light: float = 1e-2
    sigma: float = 1.0                # soft silhouette softness, px^2 at render_height, at the start
    sigma_final: float = 0.1          # ... annealed geometrically to this (a blurred IoU's optimum
                                      # sits inside the mask; a sharp one at its edge)
    occlusion_every: int = 10         # steps between updates of what the body hides of the garment
    # loss weights
    w_iou: float = 2.0                # 1 - soft mask IoU (x2 as the paper)
    w_l1: float = 1.0                 # L1 on the masked image
    w_laplacian: float = 1e4          # offsets in metres: |L o|^2 ~ 1e-6 per vertex
    w_edge: float = 0.001 * 4000
    w_flat: float = 0.0005 * 50
    w_symmetry: float = 0.1 * 1000
    w_deform: float = 0.1 * 100
    w_penetration: float = 1000.0
    w_ring: float = 1000.0            # a cross-section swells evenly: offsets along the normal
                                      # near their ring's mean (the unseen depth follows the width)
    skirt_flare_reach: float = 0.10   # m: a bridged skirt's level whose outline in the photo lies
    skirt_flare_max: float = 0.15     # further out than this starts that much less further out, at
                                      # most skirt_flare_max (refine.skirt_flare_ease; 0: off; on
                                      # since session O, with skirt_flare_depth: docs/recon.md)
    w_skirt_depth: float = 1000.0     # a bridged skirt's half depth (front/back lines, rest pose)
    skirt_depth_ratio: float = 0.6    # ... at least this share of its half width, per leg level
                                      # (the unseen flare; the hips' own ratio is about 0.6)
    skirt_flare_depth: float = 0.75   # ... and below the hips, the hips' plus this share of the
                                      # width a level gains over them (a flare widens nearly all
                                      # round; tuning truth 0.6-0.85; <= the ratio: off)
    w_albedo_smooth: float = 0.1
    w_light_prior: float = 0.01
    clearance: float = 0.003          # m the garment keeps outside the body surface
    max_offset: float = 0.25          # m: offsets are bounded (tanh) so nothing flies off
    # -- texture ---------------------------------------------------------------------------------
    texture_size: int = 512
    texture_erode_px: int = 2         # texels are taken from the photo this far inside the mask
    visible_depth_tol: float = 0.01   # m: a texel is seen when its depth is this close to the z-buffer
    ring_seen_share: float = 0.3      # the template: a limb's cross-section votes for its hidden
                                      # vertices when this share of it is seen (else they follow
                                      # their mirror on the other arm or leg; 0: off)
    inpaint_iters: int = 200          # Jacobi sweeps that fill hidden vertices from their neighbours
    seed: int = 0
    threads: int = 1                  # CPU threads for torch (0: torch's default): many small ops,
                                      # where spinning OpenMP threads cost more than they give

    def check(self) -> "ReconOptions":
        """Bounds of what a user sets (errors name the flag) and of the tuning numbers."""
        from ..errors import InputError
        if not (isinstance(self.steps, int) and 1 <= self.steps <= 10_000):
            raise InputError(f"must be an integer 1..10000, got {self.steps!r}", field="--steps")
        if not (isinstance(self.texture_size, int) and 64 <= self.texture_size <= 4096):
            raise InputError(f"must be an integer 64..4096, got {self.texture_size!r}", field="--texture-size")
        if not (64 <= self.render_height <= 1024 and self.occlusion_every >= 1 and self.smooth_passes >= 0):
            raise ValueError(f"ReconOptions out of range: {self}")
        return self
