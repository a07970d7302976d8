"""Results to export in tests, and Khronos' glTF-Validator (npm, pinned by
scripts/gltf_validator/package.json, installed by scripts/setup_gltf_validator.sh) run on a file."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / ".venv" / "gltf-validator"


def validate_gltf(path: Path) -> dict:
    """The validator's JSON report on `path` (installed first if missing)."""
    if not (VALIDATOR / "node_modules" / "gltf-validator").is_dir():
        subprocess.run(["bash", str(ROOT / "scripts" / "setup_gltf_validator.sh")], check=True)
    run = subprocess.run(["node", str(VALIDATOR / "validate.js"), str(path)], capture_output=True, text=True,
                         timeout=120)
    assert run.stdout, run.stderr
    return json.loads(run.stdout)


def colour_of(points: np.ndarray) -> np.ndarray:
    """A smooth colour field over space (P, 3) in 0..1: what a baked appearance looks like."""
    p = np.asarray(points, np.float64)
    return np.stack([0.5 + 0.4 * np.sin(6 * p[:, 1]), 0.5 + 0.4 * np.cos(5 * p[:, 0]),
                     0.5 + 0.3 * np.sin(4 * p[:, 2] + 1)], 1).astype(np.float32)


@torch.no_grad()
def parametric_result(out: Path, body, outfit: str = "tshirt+shorts", colors: bool = True) -> Path:
    """A parametric result folder (outfit.npz with faces and garments, body.npz) at the middle
    of every parameter's range, with colours from `colour_of` when asked."""
    from pointwear.body.export import export_body
    from pointwear.drape.parametric import ParametricDrape
    from pointwear.fileio import save_npz
    drape = ParametricDrape(body, outfit)
    betas = body.betas_tensor(np.zeros(10))
    code = torch.zeros(1, drape.code_dim)
    d = drape(code, betas)
    points = d.points[0].numpy().astype(np.float32)
    weights = (d.weights[0] if d.weights.dim() == 3 else d.weights).numpy().astype(np.float32)
    extra = {"colors": colour_of(points)} if colors else {}
    save_npz(out / "outfit.npz", points=points, weights=weights, code=code[0].numpy(), drape=np.array(drape.drape_id),
             betas=betas[0].numpy(), faces=np.asarray(drape.faces, np.int32),
             garment=np.asarray(drape.garment_index, np.int32), garment_names=np.array(json.dumps(list(drape.kinds))),
             **extra)
    export_body(body, out / "body.npz", betas)
    return out


@torch.no_grad()
def neural_result(out: Path, body, which: int = 0) -> Path:
    """A neural (point-only) result folder: the default neural drape on one of its training codes."""
    from pointwear.body.export import export_body
    from pointwear.drape.neural import load_neural_drape
    from pointwear.fileio import save_npz
    drape = load_neural_drape(None, body)
    betas = body.betas_tensor(np.zeros(10))
    code = drape.train_codes[which:which + 1]
    d = drape(code, betas)
    save_npz(out / "outfit.npz", points=d.points[0].numpy(), weights=d.weights[0].numpy(), code=code[0].numpy(),
             drape=np.array("neural"), betas=betas[0].numpy())
    export_body(body, out / "body.npz", betas)
    return out
