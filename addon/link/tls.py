# SPDX-License-Identifier: GPL-3.0-or-later
"""TLS with a pinned certificate, for a backend on another machine. Pure standard library.

The server makes a self-signed certificate at its first ``--tls`` start and prints its SHA-256
fingerprint; the add-on is given that fingerprint (Preferences > Add-ons > Pointwear) and accepts
no other certificate. There is no certificate authority and no host name check: the pin is the
whole trust, and it is checked before the token is sent.
"""

import hashlib
import hmac
import re
import ssl

_HEX = re.compile(r"^[0-9a-f]{64}$")


def fingerprint(der):
    """The SHA-256 fingerprint of a DER certificate as ``AB:CD:...`` (95 characters), the way
    ``openssl x509 -fingerprint -sha256`` prints it."""
    digest = hashlib.sha256(bytes(der)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def normalize_fingerprint(text):
    """A fingerprint as 64 lower-case hex digits; colons, spaces and a ``sha256`` / ``SHA256=``
    prefix are allowed. ValueError if it is not a SHA-256 fingerprint."""
    value = str(text or "").strip().lower()
    for prefix in ("sha256 fingerprint=", "sha256=", "sha256:", "sha256"):
        if value.startswith(prefix):
            value = value[len(prefix):]
            break
    value = re.sub(r"[\s:]", "", value)
    if not _HEX.match(value):
        raise ValueError("not a SHA-256 fingerprint (64 hex digits, colons allowed): {!r}".format(
            str(text)[:120]))
    return value


def client_context():
    """An SSL context for the client: TLS 1.2 or later, no CA check (the pin replaces it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def matches(der, pinned):
    """True when the DER certificate has the pinned fingerprint (constant-time compare)."""
    got = hashlib.sha256(bytes(der)).hexdigest()
    return hmac.compare_digest(got.encode("ascii"), normalize_fingerprint(pinned).encode("ascii"))
