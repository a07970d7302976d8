"""Atomic file writes: a crash, a cancel or a power cut never leaves a half-written result
behind (written to a temporary file, fsync-ed, renamed over the target, the folder fsync-ed)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)   # mkstemp makes 0600; results are shared like any file
        _fsync(tmp_path)            # the data is on disk before the name points at it
        os.replace(tmp_path, path)
        _fsync(path.parent)         # and the rename itself survives a power cut
    except OSError as exc:
        raise _naming(exc, path) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _naming(exc: OSError, path: Path) -> OSError:
    """The same OS error, naming the file it was about (a full disk says which file it stopped)."""
    if exc.filename is None or str(exc.filename).startswith(str(path.parent / ".")):
        return type(exc)(exc.errno, exc.strerror or str(exc), str(path))
    return exc


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk; folders are skipped where the OS
    cannot open them (Windows). A file written through a handle is flushed here too."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def save_npz(path: str | Path, compressed: bool = True, **arrays: np.ndarray) -> Path:
    """Write an .npz atomically (np.savez would append '.npz' to a temp name, so use a handle)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    return path


def save_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def load_npz(path: str | Path, limits: dict[str, int] | None = None, keys: tuple[str, ...] | None = None,
             error: type | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz, every one bounded by `limits` (key -> max elements; others: the
    link.arrays default) from its header before it is inflated; a regular file only, no pickles.
    Problems raise `error` (default InputError) naming the file and the key."""
    from .errors import InputError
    from .link.arrays import ArrayFileError
    from .link.arrays import load_npz as load_bounded
    try:
        return load_bounded(path, limits, keys=keys)
    except ArrayFileError as exc:
        raise (error or InputError)(exc.message, file=exc.file, field=exc.field) from None
