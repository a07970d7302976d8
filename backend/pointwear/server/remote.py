"""How `pointwear serve` faces the network: loopback only (the add-on's own backend), or another
machine's clients (`--host 0.0.0.0`), then with TLS (`--tls`, a pinned self-signed certificate,
see tls.py) or through an SSH tunnel (docs/protocol.md "Remote backend").

Beyond this machine the token is the only key: a token set with $POINTWEAR_TOKEN must then have
at least `MIN_REMOTE_TOKEN_CHARS` characters (the random one has 43), and without TLS a warning
says that the token and the files travel in clear."""
from __future__ import annotations

import ssl
from pathlib import Path

from ..link import protocol as P
from .jobs import log


class RemoteSetup:
    """Checks and TLS material for one `serve` launch."""

    def __init__(self, host: str, work: Path, tls: bool, token_from_env: str) -> None:
        self.host, self.work, self.tls, self.token = host, Path(work), tls, token_from_env
        self.fingerprint: str | None = None
        self._context: ssl.SSLContext | None = None

    @property
    def beyond_loopback(self) -> bool:
        return self.host not in P.LOCAL_HOSTS

    def check(self) -> bool:
        """Log what a client must know (the fingerprint); False (and why) if it cannot start."""
        if self.beyond_loopback:
            if self.token and len(self.token) < P.MIN_REMOTE_TOKEN_CHARS:
                log(f"error: serving on {self.host} needs a token of at least {P.MIN_REMOTE_TOKEN_CHARS} "
                    f"characters (${P.TOKEN_ENV} has {len(self.token)}); unset it for a random one")
                return False
            log(f"WARNING: serving on {self.host}, not only this machine: anyone who can reach it and has "
                "the token can run jobs, upload files and download results" +
                ("" if self.tls else "; traffic is NOT encrypted: use --tls, or an SSH tunnel to a "
                 "loopback server"))
        if not self.tls:
            return True
        try:
            from .tls import certificate_fingerprint, ensure_certificate, server_context
            cert, key, made = ensure_certificate(self.work, hosts=(self.host,))
            self.fingerprint = certificate_fingerprint(cert)
            self._context = server_context(cert, key)
        except ImportError as exc:
            log(f"error: --tls needs the 'cryptography' package ({exc}); install scripts/requirements.txt")
            return False
        except (OSError, ValueError, ssl.SSLError) as exc:
            log(f"error: cannot set up TLS from {self.work / 'tls'}: {exc}")
            return False
        log(f"TLS certificate {'made' if made else 'kept'}: {cert}")
        log(f"TLS fingerprint (SHA-256, pin it in the add-on): {self.fingerprint}")
        return True

    def announce(self) -> dict:
        """Fields for the listening line."""
        return {"tls": self.tls, "fingerprint": self.fingerprint}

    def context(self) -> ssl.SSLContext | None:
        return self._context
