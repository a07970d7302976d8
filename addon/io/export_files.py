# SPDX-License-Identifier: GPL-3.0-or-later
"""The backend's ``export`` job files put where the user asked (pure Python, no bpy).

The job writes fixed names into its folder (``protocol.RESULT_FILES["export"]``: garment.glb,
garment.obj + garment.mtl + garment.png, garment.ply). :func:`place_export` copies them to the
chosen path: ``shirt.glb``, or ``shirt.obj`` with ``shirt.mtl`` and ``shirt.png`` beside it (the
OBJ's ``mtllib`` and the MTL's ``map_Kd`` lines renamed to match), or ``shirt.ply``. Every file is
written to a temporary name in the target folder and moved into place, so an existing file is
either replaced whole or left as it was; the job folder is not changed.
"""

import os
import shutil
import tempfile

from ..link import protocol

SUFFIXES = {fmt: "." + fmt for fmt in protocol.EXPORT_FORMATS}


class ExportFileError(ValueError):
    """The job's files are missing or the target cannot be written. ``str()`` names the file."""


def target_path(filepath, fmt):
    """``filepath`` with the format's suffix (".glb", ".obj", ".ply") unless it has it already."""
    if fmt not in SUFFIXES:
        raise ExportFileError("unknown export format {!r}; one of {}".format(fmt, ", ".join(SUFFIXES)))
    path = os.path.abspath(os.fspath(filepath))
    root, ext = os.path.splitext(path)
    return path if ext.lower() == SUFFIXES[fmt] else path + SUFFIXES[fmt]


def _write_atomic(dest, write):
    """Call ``write(tmp_path)`` on a temporary file beside ``dest``, then move it onto ``dest``."""
    folder = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", suffix=".part", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _renamed_copy(src, dest, old_line, new_line):
    """Copy the text file ``src`` to ``dest`` with its first line equal to ``old_line`` replaced."""
    def write(tmp):
        done = False
        with open(src, "r", encoding="utf-8") as fin, open(tmp, "w", encoding="utf-8", newline="") as fout:
            for line in fin:
                if not done and line.rstrip("\r\n") == old_line:
                    line = new_line + "\n"
                    done = True
                fout.write(line)
    _write_atomic(dest, write)


def place_export(job_folder, fmt, filepath):
    """Copy the export job's files for ``fmt`` from ``job_folder`` to ``filepath`` (suffix added
    when missing); returns the paths written, the main file first. Raises ExportFileError naming
    a missing job file or a target folder that does not exist."""
    names = protocol.RESULT_FILES[protocol.KIND_EXPORT]
    dest = target_path(filepath, fmt)
    folder = os.path.dirname(dest)
    if not os.path.isdir(folder):
        raise ExportFileError("{}: the folder does not exist".format(folder))
    src = os.path.join(job_folder, names[fmt])
    if not os.path.isfile(src):
        raise ExportFileError("{}: missing: the export job wrote no {} file".format(src, fmt))
    if fmt != "obj":
        _write_atomic(dest, lambda tmp: shutil.copyfile(src, tmp))
        return [dest]
    stem = os.path.splitext(dest)[0]
    mtl_src, png_src = (os.path.join(job_folder, names[k]) for k in ("mtl", "texture"))
    if not os.path.isfile(mtl_src):
        raise ExportFileError("{}: missing: the export job wrote no material file".format(mtl_src))
    mtl, png = stem + ".mtl", stem + ".png"
    written = []
    if os.path.isfile(png_src):                  # untextured exports have no PNG
        _write_atomic(png, lambda tmp: shutil.copyfile(png_src, tmp))
        written.append(png)
    _renamed_copy(mtl_src, mtl, "map_Kd " + names["texture"], "map_Kd " + os.path.basename(png))
    _renamed_copy(src, dest, "mtllib " + names["mtl"], "mtllib " + os.path.basename(mtl))
    return [dest, mtl] + written
