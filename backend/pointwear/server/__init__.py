"""`pointwear serve`: the job server the Blender add-on talks to (docs/protocol.md).

- app.py: the asyncio TCP server (connections, hello/token, dispatch, size limit, shutdown)
- jobs.py: job records and folders, the store that finds them again, the one-at-a-time queue
- kinds.py: the job kinds (param checks and runners); `register` adds one
- transfer.py: upload / download of files over the protocol (a backend on another machine)
- remote.py, tls.py: serving beyond loopback (token rules, `--tls` with a self-signed certificate)
"""
from .app import serve
from .kinds import KINDS, JobKind, ParamError, Params, register

__all__ = ["serve", "KINDS", "JobKind", "ParamError", "Params", "register"]
