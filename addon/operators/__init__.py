# SPDX-License-Identifier: GPL-3.0-or-later
"""Pointwear operators (``bpy.ops.pointwear.*``), by role:

- :mod:`.backend`   ``check_backend``, ``start_backend``, ``stop_backend``
- :mod:`.install`   ``install_backend``, ``update_backend``, ``remove_backend``,
  ``cancel_backend_install``, ``run_diagnostics`` (the backend's own environment)
- :mod:`.jobs`      ``fit_outfit``, ``cancel_job``, ``wait_job`` (modal in the UI, blocking in
  scripts and background mode)
- :mod:`.appearance` ``fit_appearance``, ``neural_render`` (job operators, as above)
- :mod:`.subject`   ``new_subject`` (a subject from a video or images: the ``prepare`` job)
- :mod:`.recon`     ``reconstruct_image`` (a textured garment mesh from one photo: ``reconstruct``)
- :mod:`.scene_ops` ``import_result``, ``load_motion``, ``redrape``, ``make_cloth``
- :mod:`.assets`    ``retarget_armature``, ``export_result`` (jobs); :mod:`.sliders` the outfit sliders
- :mod:`.runtime`   the backend session, the event pump (timer) and the scene mirror
"""

from . import install, runtime
from .appearance import POINTWEAR_OT_fit_appearance, POINTWEAR_OT_neural_render
from .appearance import CLASSES as _APPEARANCE_CLASSES
from .assets import POINTWEAR_OT_export_result, POINTWEAR_OT_retarget_armature
from .assets import CLASSES as _ASSET_CLASSES
from .sliders import CLASSES as _SLIDER_CLASSES
from .backend import (
    POINTWEAR_OT_check_backend,
    POINTWEAR_OT_start_backend,
    POINTWEAR_OT_stop_backend,
)
from .backend import CLASSES as _BACKEND_CLASSES
from .install import CLASSES as _INSTALL_CLASSES
from .jobs import POINTWEAR_OT_cancel_job, POINTWEAR_OT_fit_outfit, POINTWEAR_OT_wait_job
from .jobs import CLASSES as _JOB_CLASSES
from .runtime import backend_python_path
from .scene_ops import POINTWEAR_OT_import_result, POINTWEAR_OT_load_motion, POINTWEAR_OT_redrape
from .scene_ops import CLASSES as _SCENE_CLASSES
from .recon import CLASSES as _RECON_CLASSES
from .recon import POINTWEAR_OT_reconstruct_image
from .subject import POINTWEAR_OT_new_subject
from .subject import CLASSES as _SUBJECT_CLASSES

CLASSES = (_BACKEND_CLASSES + _INSTALL_CLASSES + _JOB_CLASSES + _SUBJECT_CLASSES + _RECON_CLASSES
           + _APPEARANCE_CLASSES + _SCENE_CLASSES + _ASSET_CLASSES + _SLIDER_CLASSES)

__all__ = [
    "CLASSES", "backend_python_path", "runtime",
    "POINTWEAR_OT_check_backend", "POINTWEAR_OT_start_backend", "POINTWEAR_OT_stop_backend",
    "POINTWEAR_OT_fit_outfit", "POINTWEAR_OT_cancel_job", "POINTWEAR_OT_wait_job",
    "POINTWEAR_OT_new_subject", "POINTWEAR_OT_reconstruct_image",
    "POINTWEAR_OT_fit_appearance", "POINTWEAR_OT_neural_render",
    "POINTWEAR_OT_import_result", "POINTWEAR_OT_load_motion", "POINTWEAR_OT_redrape",
    "POINTWEAR_OT_retarget_armature", "POINTWEAR_OT_export_result",
]


def register_extra():
    runtime.register()
    install.register()


def unregister_extra():
    # Before the classes go: stop the pump timer and the backend this add-on started.
    install.unregister()
    runtime.unregister()
