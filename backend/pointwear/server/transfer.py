"""File transfer of `pointwear serve` (docs/protocol.md "File transfer"): a client on another
machine uploads subjects (and any other input file or folder) and downloads results, so no shared
filesystem is needed.

Uploads are content-addressed: `upload_begin` carries the manifest (relative path, size, SHA-256
of every file; paths checked by the shared `link.transfer.check_rel_path`) and the upload's id is
a hash of it. Chunks are written into `WORK/uploads/<id>.partial/` strictly in order (a chunk not
at the end of what is there gets `bad_offset` with the `expected` offset), so an upload broken off
(client gone, server restarted) is resumed by asking `upload_begin` again: the reply's `have`
says how much of each file is there. `upload_end` checks every size and SHA-256 (damaged files
are removed and named), then renames the folder to `WORK/uploads/<id>/` in one step.
Downloads (`list`, `download`) read only below `WORK/jobs` and `WORK/uploads` (paths resolved,
links too), never the TLS key. Every size is bounded before anything is written or read.

Handlers run on the event loop and return the reply (an ERROR reply for a refusal): each does
at most one chunk of I/O, except `upload_end` and `list`, which hash the files they name."""
from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
from pathlib import Path

from ..link import protocol as P
from ..link.transfer import check_rel_path, sha256_file, upload_id
from .jobs import log

MANIFEST = ".manifest.json"
SPACE_MARGIN_BYTES = 256 << 20    # an upload must leave this much disk free
DIGEST_CHARS = 64


def _flush_to_disk(paths: list[Path]) -> None:
    """Make the files durable before the upload counts as done: one os.sync() (one journal
    commit: ~20 ms where fsync-ing 300 files one by one took 1.1 s), else fsync each file."""
    if hasattr(os, "sync"):
        os.sync()
        return
    for path in paths:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


class Refused(Exception):
    """A transfer request refused: becomes an ERROR reply with the request's id."""

    def __init__(self, code: str, message: str, hint: str = "", **fields) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.fields = code, message, hint, fields


class Transfers:
    """The transfer handlers of one server, over its work folder."""

    def __init__(self, work: Path) -> None:
        self.work = Path(work).resolve()
        self.root = self.work / "uploads"
        self.readable = (self.work / "jobs", self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def handlers(self) -> dict:
        """type -> handler(conn, msg, rid) -> reply, for the server's dispatch table."""
        return {P.MSG_UPLOAD_BEGIN: self._wrap(self.begin), P.MSG_UPLOAD_CHUNK: self._wrap(self.chunk),
                P.MSG_UPLOAD_END: self._wrap(self.end), P.MSG_LIST: self._wrap(self.listing),
                P.MSG_DOWNLOAD: self._wrap(self.download)}

    @staticmethod
    def _wrap(fn):
        def handler(conn, msg: dict, rid) -> dict:
            try:
                return fn(msg)
            except Refused as exc:
                return P.error_message(exc.code, exc.message, exc.hint, **exc.fields)
            except OSError as exc:   # a full disk, a file gone meanwhile: the request fails, not the server
                return P.error_message(P.E_INTERNAL, f"{type(exc).__name__}: {exc}"[:2000],
                                       "a file operation failed on the server")
        return handler

    # -- uploads ---------------------------------------------------------------------------------
    def _manifest(self, raw) -> list[dict]:
        if not isinstance(raw, list) or not raw:
            raise Refused(P.E_BAD_MESSAGE, "upload_begin needs files: a non-empty list", field="files")
        if len(raw) > P.MAX_UPLOAD_FILES:
            raise Refused(P.E_TOO_BIG, f"{len(raw)} files in one upload, at most {P.MAX_UPLOAD_FILES}",
                          "upload fewer files at a time", field="files")
        files, seen, total = [], set(), 0
        for i, f in enumerate(raw):
            where = f"files[{i}]"
            if not isinstance(f, dict):
                raise Refused(P.E_BAD_MESSAGE, f"{where}: must be an object", field="files")
            try:
                path = check_rel_path(f.get("path"))
            except ValueError as exc:
                raise Refused(P.E_BAD_PATH, f"{where}: {exc}", field="files") from None
            size, digest = f.get("size"), f.get("sha256")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise Refused(P.E_BAD_MESSAGE, f"{where}: size must be an integer >= 0", field="files")
            if not isinstance(digest, str) or len(digest) != DIGEST_CHARS or \
                    any(c not in "0123456789abcdef" for c in digest):
                raise Refused(P.E_BAD_MESSAGE, f"{where}: sha256 must be 64 lower-case hex digits", field="files")
            if path in seen:
                raise Refused(P.E_BAD_PATH, f"{where}: {path!r} twice", field="files")
            seen.add(path)
            total += size
            files.append({"path": path, "size": size, "sha256": digest})
        for path in seen:   # "a" and "a/b" cannot both be files
            parts = path.split("/")
            for k in range(1, len(parts)):
                if "/".join(parts[:k]) in seen:
                    raise Refused(P.E_BAD_PATH, f"{'/'.join(parts[:k])!r} is a file and a folder", field="files")
        if total > P.MAX_UPLOAD_BYTES:
            raise Refused(P.E_TOO_BIG, f"{total} bytes in one upload, at most {P.MAX_UPLOAD_BYTES}", field="files")
        return sorted(files, key=lambda f: f["path"])

    def _staging(self, uid) -> Path:
        if not isinstance(uid, str) or len(uid) != 32 or any(c not in "0123456789abcdef" for c in uid):
            raise Refused(P.E_UNKNOWN_UPLOAD, f"no such upload: {str(uid)[:40]!r}", field="upload_id")
        return self.root / f"{uid}.partial"

    def _load(self, uid) -> tuple[Path, dict]:
        staging = self._staging(uid)
        try:
            files = json.loads((staging / MANIFEST).read_text())
        except (OSError, ValueError):
            raise Refused(P.E_UNKNOWN_UPLOAD, f"no upload {uid} under way", "start it with upload_begin",
                          field="upload_id") from None
        return staging, {f["path"]: f for f in files}

    def begin(self, msg: dict) -> dict:
        files = self._manifest(msg.get("files"))
        uid = upload_id(files)
        final, staging = self.root / uid, self.root / f"{uid}.partial"
        if final.is_dir():
            return {"type": P.REPLY_UPLOAD, "upload_id": uid, "done": True, "folder": str(final)}
        total = sum(f["size"] for f in files)
        have = {}
        if (staging / MANIFEST).is_file():
            for f in files:
                part = staging / f["path"]
                if part.is_file():
                    have[f["path"]] = min(part.stat().st_size, f["size"])
        else:
            free = shutil.disk_usage(self.root).free
            if total + SPACE_MARGIN_BYTES > free:
                raise Refused(P.E_TOO_BIG, f"the upload needs {total} bytes, {free} are free on the server",
                              "free disk space on the server (its work folder)", field="files")
            staging.mkdir(parents=True, exist_ok=True)
            (staging / MANIFEST).write_text(json.dumps(files))
        left = total - sum(have.values())
        return {"type": P.REPLY_UPLOAD, "upload_id": uid, "done": False, "have": have, "bytes_left": left}

    def chunk(self, msg: dict) -> dict:
        staging, files = self._load(msg.get("upload_id"))
        path, offset, data = msg.get("path"), msg.get("offset"), msg.get("data")
        entry = files.get(path) if isinstance(path, str) else None
        if entry is None:
            raise Refused(P.E_BAD_PATH, f"not a file of this upload: {str(path)[:200]!r}", field="path")
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise Refused(P.E_BAD_MESSAGE, "offset must be an integer", field="offset")
        if not isinstance(data, str) or len(data) > 4 * (P.CHUNK_BYTES // 3 + 1):
            raise Refused(P.E_BAD_MESSAGE, f"data must be base64 of at most {P.CHUNK_BYTES} bytes", field="data")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise Refused(P.E_BAD_MESSAGE, "data is not base64", field="data") from None
        target = staging / path
        have = target.stat().st_size if target.is_file() else 0
        if offset != have:
            raise Refused(P.E_BAD_OFFSET, f"{path}: the server has {have} bytes, the chunk starts at {offset}",
                          "send from the expected offset", field="offset", expected=have)
        if offset + len(raw) > entry["size"]:
            raise Refused(P.E_TOO_BIG, f"{path}: the chunk goes past the size in the manifest ({entry['size']})",
                          field="data")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "ab") as fh:
            fh.write(raw)
        return {"type": P.REPLY_OK, "upload_id": msg["upload_id"], "path": path, "received": offset + len(raw)}

    def end(self, msg: dict) -> dict:
        uid = msg.get("upload_id")
        staging, files = self._load(uid)
        bad = []
        for path, entry in files.items():
            target = staging / path
            if entry["size"] == 0 and not target.exists():   # an empty file never gets a chunk
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            size = target.stat().st_size if target.is_file() else -1
            if size < entry["size"]:
                bad.append(path)
                continue
            if size > entry["size"] or sha256_file(target) != entry["sha256"]:
                target.unlink()
                bad.append(path)
        if bad:
            raise Refused(P.E_CHECKSUM, f"{len(bad)} file(s) incomplete or damaged: {bad[:5]}",
                          "send them again: upload_begin says what the server has", files=bad[:100])
        _flush_to_disk([staging / path for path in files])
        (staging / MANIFEST).unlink()
        final = self.root / uid
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():   # another connection finished the same upload first: fine
                raise
            shutil.rmtree(staging, ignore_errors=True)
        log(f"upload {uid}: {len(files)} file(s), {sum(f['size'] for f in files.values())} bytes")
        return {"type": P.REPLY_OK, "upload_id": uid, "folder": str(final)}

    # -- downloads -------------------------------------------------------------------------------
    def _readable(self, raw) -> Path:
        if not isinstance(raw, str) or not raw or len(raw) > 4096 or "\x00" in raw:
            raise Refused(P.E_BAD_PATH, "path must be an absolute path on the server", field="path")
        path = Path(raw)
        if not path.is_absolute():
            path = self.work / path
        try:
            path = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise Refused(P.E_BAD_PATH, f"no such file on the server: {raw[:200]!r}", field="path") from None
        if not any(path.is_relative_to(root) for root in self.readable):
            raise Refused(P.E_BAD_PATH, f"not in the server's job or upload folders: {raw[:200]!r}",
                          "only job results and uploads can be downloaded", field="path")
        return path

    def listing(self, msg: dict) -> dict:
        path = self._readable(msg.get("path"))
        start = msg.get("start", 0)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise Refused(P.E_BAD_MESSAGE, "start must be an integer >= 0", field="start")
        if path.is_file():
            kind, names = "file", [(path.name, path)]
        elif path.is_dir():
            kind, names = "dir", []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = Path(root) / name
                    if full.is_file() and not name.endswith(".partial") and \
                            full.resolve().is_relative_to(path):
                        names.append((full.relative_to(path).as_posix(), full))
        else:
            raise Refused(P.E_BAD_PATH, f"not a file or folder: {str(path)[:200]!r}", field="path")
        page = names[start:start + P.LIST_PAGE]
        entries = [{"path": rel, "size": full.stat().st_size, "sha256": sha256_file(full)} for rel, full in page]
        nxt = start + P.LIST_PAGE if start + P.LIST_PAGE < len(names) else None
        return {"type": P.REPLY_FILES, "path": str(path), "kind": kind, "files": entries, "next": nxt,
                "count": len(names)}

    def download(self, msg: dict) -> dict:
        path = self._readable(msg.get("path"))
        offset, length = msg.get("offset", 0), msg.get("length", P.CHUNK_BYTES)
        for name, value in (("offset", offset), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise Refused(P.E_BAD_MESSAGE, f"{name} must be an integer >= 0", field=name)
        if not path.is_file():
            raise Refused(P.E_BAD_PATH, f"not a file: {str(path)[:200]!r}", field="path")
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(min(offset, size))
            data = fh.read(min(length, P.CHUNK_BYTES))
        return {"type": P.REPLY_DATA, "path": str(path), "offset": offset, "size": size,
                "data": base64.b64encode(data).decode("ascii"), "eof": offset + len(data) >= size}
