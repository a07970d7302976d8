# SPDX-License-Identifier: GPL-3.0-or-later
"""Outfit sliders on a Pointwear armature: its ``pointwear_sliders`` collection (one item per
garment parameter, a 0..1 factor of the parameter's range) and the slider table file named by
``TABLE_PROP``. Moving a slider re-drapes the clothing's rest points in place from the table
(io/sliders.py, numpy): the Armature modifier poses them, so the garment follows the motion.
Stateless: the points always come from every slider's value, so undo (which restores both the
values and the meshes) stays consistent."""

import os

from ..io import sliders as table_io
from . import importer, skin

TABLE_PROP = "pointwear_slider_table"
_cache = {}          # table path -> (mtime, SliderTable)
_filling = [False]   # set while the collection is filled: no re-drape per item


def table_for(armature):
    """The armature's SliderTable (read once per file version), or None without one."""
    path = armature.get(TABLE_PROP, "")
    if not path or not os.path.isfile(path):
        return None
    mtime = os.path.getmtime(path)
    cached = _cache.get(path)
    if cached is None or cached[0] != mtime:
        cached = _remember(path, mtime, table_io.read_table(path))
    return cached[1]


def _remember(path, mtime, table):
    """Keep one table in memory: the one the sliders were last loaded from or moved with."""
    _cache.clear()
    _cache[path] = (mtime, table)
    return _cache[path]


def slider_value(item):
    return item.low + item.factor * (item.high - item.low)


def load(armature, path):
    """Read the table at ``path``, check it against the armature's clothing and fill the sliders
    at the result's values. Raises ResultFileError / ValueError (nothing changed then)."""
    mtime = os.path.getmtime(path) if os.path.isfile(path) else None
    table = table_io.read_table(path)
    for kind, obj in importer.pointwear_children(armature).items():
        if kind in ("clothing_points", "clothing_mesh") and len(obj.data.vertices) != len(table.base):
            raise ValueError("the slider table {} has {} points but {} has {}".format(
                path, len(table.base), obj.name, len(obj.data.vertices)))
    armature[TABLE_PROP] = os.path.abspath(path)
    # the first move uses this very table: reading the file again (tens of MB inflated) made the
    # first move ~0.6 s on a loaded machine (scripts/bench_assets.py)
    _remember(os.path.abspath(path), mtime, table)
    _filling[0] = True
    try:
        armature.pointwear_sliders.clear()
        for s in range(table.count):
            item = armature.pointwear_sliders.add()
            item.name = table.names[s]
            item.garment, item.param = table.garments[s], table.params[s]
            item.low, item.high = float(table.low[s]), float(table.high[s])
            item.rest_factor = float((table.value[s] - table.low[s]) / (table.high[s] - table.low[s]))
            item.factor = item.rest_factor
    finally:
        _filling[0] = False
    return table


def redrape(armature):
    """Set the clothing's rest points from the sliders' values (the slider update callback)."""
    if _filling[0]:
        return None
    table = table_for(armature)
    if table is None or len(armature.pointwear_sliders) != table.count:
        return None
    points = table_io.evaluate(table, [slider_value(item) for item in armature.pointwear_sliders])
    for kind, obj in importer.pointwear_children(armature).items():
        if kind in ("clothing_points", "clothing_mesh"):
            skin.set_rest_positions(obj.data, points)
            obj.update_tag()
    return points


def moved(armature):
    """{slider name: value} of the sliders away from the result's value."""
    return {item.name: slider_value(item) for item in armature.pointwear_sliders
            if abs(item.factor - item.rest_factor) > 1e-6}


def reset(armature):
    _filling[0] = True
    try:
        for item in armature.pointwear_sliders:
            item.factor = item.rest_factor
    finally:
        _filling[0] = False
    return redrape(armature)


def clear(armature):
    armature.pointwear_sliders.clear()
    if TABLE_PROP in armature:
        del armature[TABLE_PROP]
