"""Body models in SMPL's layout: a user's SMPL file or the free default body."""
from .joints import JOINT_NAMES, NUM_JOINTS, PARENTS
from .model import BodyModel, BodyOutput, load_body, skin_frames, skin_points
from .regions import REGION_GROUPS, REGION_NAMES, region_labels, region_mask, region_weights

__all__ = ["JOINT_NAMES", "NUM_JOINTS", "PARENTS", "BodyModel", "BodyOutput", "load_body",
           "skin_frames", "skin_points", "REGION_GROUPS", "REGION_NAMES", "region_labels", "region_mask",
           "region_weights"]
