"""Garment codes for tests: a one-garment drape's logits for given parameter values."""
from __future__ import annotations

import numpy as np
import torch


def family_logits(drape, **values) -> torch.Tensor:
    """(1, D) logits of `drape`'s first garment with these parameter values (the others at the
    middle of their range, logit 0)."""
    code = torch.zeros(1, drape.code_dim)
    for k, (name, lo, hi) in enumerate(drape.families[0].ranges):
        if name in values:
            code[0, k] = float(np.log((values[name] - lo) / (hi - values[name])))
    return code
