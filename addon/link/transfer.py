# SPDX-License-Identifier: GPL-3.0-or-later
"""File transfer over the protocol, for a backend on another machine (docs/protocol.md "File
transfer"). Pure standard library: no bpy.

Both sides use :func:`check_rel_path` (what a path in an upload or a listing may be) and
:func:`manifest` / :func:`upload_id` (what an upload is). The client side is :func:`upload` (a
file or a folder to the server's work folder: chunked, each file's SHA-256 checked by the server,
resumable: an interrupted upload asked for again sends only what the server does not have yet),
:func:`download` (a result file or folder back, resumable from a ``.part`` file, each file's
SHA-256 checked here) and :class:`RemoteFiles`, which does both around a job: the local paths in a
submit's params are uploaded and replaced by the server's, and the job's results are downloaded
into a local folder when it ends.
"""

import base64
import hashlib
import json
import os
import posixpath

from . import protocol
from .client import BackendError

_READ = 1 << 20
WINDOW = 8          # requests under way at once in an upload or a download


def check_rel_path(path):
    """``path`` if it is a clean relative POSIX path (``a/b.png``): not empty, not absolute, no
    ``.``/``..``/empty parts, no backslash, NUL or control characters, at most
    ``MAX_PATH_CHARS``. ValueError naming the problem otherwise."""
    if not isinstance(path, str) or not path:
        raise ValueError("a path must be a non-empty string, got {!r}".format(path))
    if len(path) > protocol.MAX_PATH_CHARS:
        raise ValueError("a path over {} characters".format(protocol.MAX_PATH_CHARS))
    if path.startswith("/") or "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ValueError("not a clean relative path: {!r}".format(path[:200]))
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a path that is not valid UTF-8: {!r}".format(path[:200])) from None
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError("a path with an empty, '.' or '..' part: {!r}".format(path[:200]))
    return path


def sha256_file(path, start=0, stop=None):
    """SHA-256 hex digest of a file's bytes [start, stop)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        left = None if stop is None else stop - start
        while left is None or left > 0:
            data = fh.read(_READ if left is None else min(_READ, left))
            if not data:
                break
            h.update(data)
            if left is not None:
                left -= len(data)
    return h.hexdigest()


def manifest(local):
    """The upload manifest of a local file or folder: ``[{"path", "size", "sha256"}]`` sorted by
    path, paths relative to the folder that holds ``local`` (so they start with its name).
    Only regular files are sent (links are followed to files; FIFOs and the like are skipped).
    ValueError when it is over the upload limits or a name cannot be sent."""
    local = os.path.abspath(local)
    top = os.path.basename(local.rstrip(os.sep)) or "upload"
    if os.path.isdir(local):
        pairs = []
        for root, dirs, names in os.walk(local):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                if os.path.isfile(full):
                    rel = os.path.relpath(full, local).replace(os.sep, "/")
                    pairs.append((top + "/" + rel, full))
                if len(pairs) > protocol.MAX_UPLOAD_FILES:
                    raise ValueError("{}: more than {} files to upload".format(local, protocol.MAX_UPLOAD_FILES))
    elif os.path.isfile(local):
        pairs = [(top, local)]
    else:
        raise ValueError("{}: not a file or folder".format(local))
    files, total = [], 0
    for rel, full in sorted(pairs):
        check_rel_path(rel)
        size = os.path.getsize(full)
        total += size
        if total > protocol.MAX_UPLOAD_BYTES:
            raise ValueError("{}: over {} bytes to upload".format(local, protocol.MAX_UPLOAD_BYTES))
        files.append({"path": rel, "size": size, "sha256": sha256_file(full)})
    return files


def upload_id(files):
    """The id of an upload: a hash of its manifest, so the same content has the same id (asking
    again resumes it, or finds it done)."""
    canon = json.dumps(sorted((f["path"], int(f["size"]), f["sha256"]) for f in files),
                       separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:32]


def _progress(progress, done, total):
    if progress is not None:
        progress(done, total)


def upload(client, local, progress=None, timeout=60.0, attempts=3, window=WINDOW):
    """Upload a local file or folder; returns ``{"path": the server's path of it, "sent": bytes
    sent now, "total": its bytes, "upload_id"}``. Only what the server does not have is sent
    (``window`` chunks under way at a time); files the server found damaged (``checksum``) or
    out of step (``bad_offset``) are asked for again, up to ``attempts`` times.
    ``progress(done, total)`` is called after every chunk. Raises BackendError."""
    local = os.path.abspath(local)
    files = manifest(local)
    base = os.path.dirname(local.rstrip(os.sep))
    top = files[0]["path"].split("/")[0] if files else os.path.basename(local)
    total = sum(f["size"] for f in files)
    sent = 0
    for attempt in range(attempts):
        begin = client.request({"type": protocol.MSG_UPLOAD_BEGIN, "files": files}, timeout=timeout)
        uid = begin["upload_id"]
        if begin.get("done"):
            folder = begin["folder"]
            break
        have = {f["path"]: min(int((begin.get("have") or {}).get(f["path"], 0)), f["size"]) for f in files}
        done = sum(have.values())
        _progress(progress, done, total)
        try:
            for message, reply in client.request_stream(_chunks(files, have, base, uid), window, timeout):
                n = int(reply["received"]) - message["offset"]
                sent, done = sent + n, done + n
                _progress(progress, done, total)
            folder = client.request({"type": protocol.MSG_UPLOAD_END, "upload_id": uid},
                                    timeout=timeout)["folder"]
            break
        except BackendError as ex:
            if ex.code in (protocol.E_CHECKSUM, protocol.E_BAD_OFFSET) and attempt + 1 < attempts:
                continue
            raise
    _progress(progress, total, total)
    return {"path": posixpath.join(folder, top), "sent": sent, "total": total, "upload_id": uid}


def _chunks(files, have, base, uid):
    """The upload_chunk messages of what the server lacks, read lazily, file by file."""
    for f in files:
        offset, size = have[f["path"]], f["size"]
        if offset >= size:
            continue
        path = os.path.join(base, *f["path"].split("/"))
        with open(path, "rb") as fh:
            fh.seek(offset)
            while offset < size:
                data = fh.read(min(protocol.CHUNK_BYTES, size - offset))
                if not data:
                    raise BackendError("{} became shorter while it was uploaded".format(path), code="changed")
                yield {"type": protocol.MSG_UPLOAD_CHUNK, "upload_id": uid, "path": f["path"],
                       "offset": offset, "data": base64.b64encode(data).decode("ascii")}
                offset += len(data)


def list_remote(client, remote, timeout=60.0):
    """The files under a server path (a file or a folder in its work folder): ``(kind, entries)``
    with kind ``"file"`` or ``"dir"`` and entries ``{"path", "size", "sha256"}`` (relative)."""
    entries, start, kind = [], 0, "dir"
    while True:
        reply = client.request({"type": protocol.MSG_LIST, "path": remote, "start": start}, timeout=timeout)
        kind = reply.get("kind", "dir")
        entries.extend(reply.get("files") or [])
        nxt = reply.get("next")
        if not isinstance(nxt, int) or nxt <= start:
            return kind, entries
        start = nxt


def download(client, remote, local_dir, progress=None, timeout=60.0, name=None, window=WINDOW):
    """Download a server file or folder into ``local_dir`` (as ``name``, default its own name);
    returns the local path. A file already there with the right size and SHA-256 is kept; a
    ``.part`` file left by an interrupted download is continued. Raises BackendError (code
    ``checksum`` when a file arrived damaged; its ``.part`` is removed)."""
    kind, entries = list_remote(client, remote, timeout)
    target = os.path.join(os.path.abspath(local_dir), name or posixpath.basename(remote.rstrip("/")))
    total = sum(int(e["size"]) for e in entries)
    wanted, done = {}, 0
    for e in entries:
        if kind == "file":
            dest, source = target, remote
        else:
            rel = check_rel_path(e["path"])
            dest, source = os.path.join(target, *rel.split("/")), posixpath.join(remote, rel)
        part = _Part(dest, int(e["size"]), e["sha256"])
        if part.complete():
            done += part.size
        else:
            done += part.offset
            wanted[source] = part
    if kind != "file":
        os.makedirs(target, exist_ok=True)
    _progress(progress, done, total)
    try:
        for message, reply in client.request_stream(_requests(wanted), window, timeout):
            part = wanted[message["path"]]
            n = part.write(message["offset"], base64.b64decode(reply.get("data") or ""), message["path"])
            done += n
            _progress(progress, done, total)
    finally:
        for part in wanted.values():
            part.close()
    if wanted:
        _sync(wanted.values())
    return target


def _sync(parts):
    """Flush what was downloaded to disk: one os.sync() where there is one (one journal commit
    instead of one per file), else each file."""
    if hasattr(os, "sync"):
        os.sync()
        return
    for part in parts:
        if os.path.isfile(part.dest):
            fd = os.open(part.dest, os.O_RDWR | getattr(os, "O_BINARY", 0))   # Windows: fsync needs write access
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _requests(wanted):
    """The download messages of every missing byte, file by file; files with nothing to fetch
    (empty ones) are finished on the way."""
    for source, part in wanted.items():
        if part.offset >= part.size:
            part.finish()
        for offset in range(part.offset, part.size, protocol.CHUNK_BYTES):
            yield {"type": protocol.MSG_DOWNLOAD, "path": source, "offset": offset,
                   "length": protocol.CHUNK_BYTES}


class _Part:
    """One file being downloaded into ``<dest>.part``, renamed into place once its SHA-256 is
    the listed one."""

    def __init__(self, dest, size, sha):
        self.dest, self.size, self.sha, self.path = dest, size, sha, dest + ".part"
        self.offset = os.path.getsize(self.path) if os.path.isfile(self.path) else 0
        if self.offset > size:
            os.remove(self.path)
            self.offset = 0
        self.fh = None

    def complete(self):
        return os.path.isfile(self.dest) and os.path.getsize(self.dest) == self.size and \
            sha256_file(self.dest) == self.sha

    def write(self, offset, data, source):
        """Append one chunk (the next one); returns its length; the last one finishes the file."""
        if not data or offset != self.offset:
            raise BackendError("the server sent no data for {} at {}".format(source, offset), code="download")
        if self.fh is None:
            os.makedirs(os.path.dirname(self.dest), exist_ok=True)
            self.fh = open(self.path, "ab")
        data = data[:self.size - offset]
        self.fh.write(data)
        self.offset += len(data)
        if self.offset >= self.size:
            self.finish()
        return len(data)

    def finish(self):
        if self.fh is None:
            os.makedirs(os.path.dirname(self.dest), exist_ok=True)
            self.fh = open(self.path, "ab")
        self.close()   # made durable by download()'s one sync at the end
        if sha256_file(self.path) != self.sha:
            os.remove(self.path)
            raise BackendError("{} arrived damaged (SHA-256 differs); it was removed".format(self.dest),
                               code=protocol.E_CHECKSUM, hint="Download it again")
        os.replace(self.path, self.dest)

    def close(self):
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class RemoteFiles:
    """The files of a job on a backend that cannot see this machine's disk: local paths in
    params go up before the job, its results come down after. ``local_root`` holds the
    downloads, one folder per job."""

    def __init__(self, client, local_root, timeout=60.0):
        self.client, self.local_root, self.timeout = client, os.path.abspath(local_root), timeout
        self.uploaded = {}      # local path -> the server's path (this session)

    def upload_params(self, params, progress=None):
        """A copy of ``params`` with every value that is an absolute path existing here replaced
        by the path of its uploaded copy on the server."""
        out = {}
        for key, value in params.items():
            if isinstance(value, str) and os.path.isabs(value) and os.path.exists(value):
                out[key] = upload(self.client, value, progress=progress, timeout=self.timeout)["path"]
                self.uploaded[value] = out[key]
            else:
                out[key] = value
        return out

    def fetch_result(self, job_id, folder, files, progress=None):
        """Download a job's RESULT (``folder`` and ``files`` as the server sent them) into
        ``local_root/<job_id>/``; returns ``(local folder, {name: local path})``."""
        into = os.path.join(self.local_root, job_id)
        local_folder = download(self.client, folder, into, progress=progress, timeout=self.timeout) \
            if folder else into
        prefix = folder.rstrip("/") + "/"
        local_files = {}
        for name, path in (files or {}).items():
            if path == folder:
                local_files[name] = local_folder
            elif path.startswith(prefix):
                rel = check_rel_path(path[len(prefix):])
                local_files[name] = os.path.join(local_folder, *rel.split("/"))
            else:   # a result outside the result folder: fetched on its own
                local_files[name] = download(self.client, path, os.path.join(into, "extra"),
                                             timeout=self.timeout)
        return local_folder, local_files

    def fetch_preview(self, job_id, path):
        """A local copy of a preview PNG the server named ("" if it is gone already)."""
        try:
            return download(self.client, path, os.path.join(self.local_root, job_id, "preview"),
                            timeout=self.timeout)
        except (BackendError, OSError):
            return ""
