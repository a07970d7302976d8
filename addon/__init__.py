# SPDX-License-Identifier: GPL-3.0-or-later
"""Pointwear: the Blender side.

Installed as a Blender extension (id ``pointwear``, manifest at the repository root), so this
package is imported as ``bl_ext.<repo>.pointwear``: relative imports only, no ``bl_info``.

Layout (pure logic kept apart from bpy, as glTF-Blender-IO keeps ``io/`` apart from ``blender/``):

- ``link/``        socket client and wire protocol for the backend; never imports bpy
- ``operators/``   bpy operators
- ``panels.py``    sidebar UI (View3D > Sidebar > Pointwear)
- ``preferences.py`` add-on preferences (backend executable, host, port, token, folders, device)
- ``properties.py`` per-scene state (``Scene.pointwear``)

The add-on imports only bpy, the standard library and numpy: never torch, never the backend
package ``pointwear``. The bpy submodules are imported inside :func:`register`, so importing this
package (e.g. to reach the pure ``link`` package from a test) does not pull in bpy.

Every class, property, handler and timer registered here is removed again by :func:`unregister`.
"""

# Modules whose ``CLASSES`` are registered, in order (property groups before anything that points
# at them; preferences first so operators can read them).
_MODULE_NAMES = ("preferences", "properties", "operators", "panels")


def _modules():
    import importlib

    return [importlib.import_module("." + name, __package__) for name in _MODULE_NAMES]


def register():
    import bpy

    for module in _modules():
        for cls in module.CLASSES:
            bpy.utils.register_class(cls)
        # Module-level extras (RNA pointers on ID types, handlers, timers) after its classes.
        if hasattr(module, "register_extra"):
            module.register_extra()


def unregister():
    import bpy

    for module in reversed(_modules()):
        if hasattr(module, "unregister_extra"):
            module.unregister_extra()
        for cls in reversed(module.CLASSES):
            # Tolerate a half-finished register() so disabling never raises.
            if getattr(cls, "is_registered", False):
                bpy.utils.unregister_class(cls)
