"""TLS for `pointwear serve --tls`: a self-signed certificate made at the first start and kept in
`WORK/tls/` (cert.pem, key.pem readable by this user only), and the server's SSL context.

Clients do not check a certificate authority: they pin the certificate's SHA-256 fingerprint,
which the server prints (stderr and its listening line) and `pointwear serve --fingerprint`
prints without starting. Deleting `WORK/tls/` makes a new certificate (and a new fingerprint) at
the next start."""
from __future__ import annotations

import datetime
import os
import socket
import ssl
from pathlib import Path

from ..link.tls import fingerprint

CERT_NAME, KEY_NAME = "cert.pem", "key.pem"
VALID_DAYS = 3650


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the start (the key is never readable by others)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def make_certificate(folder: Path, hosts: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A new self-signed certificate (ECDSA P-256, 10 years) for `hosts` in `folder`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pointwear " + socket.gethostname()[:40])])
    alt: list = [x509.DNSName("localhost")]
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path = folder / KEY_NAME, folder / CERT_NAME
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def ensure_certificate(work: Path, hosts: tuple[str, ...] = ()) -> tuple[Path, Path, bool]:
    """(cert, key, made): the work folder's certificate, made now if there is none."""
    folder = Path(work) / "tls"
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path, False
    cert_path, key_path = make_certificate(folder, hosts)
    return cert_path, key_path, True


def certificate_fingerprint(cert_path: Path) -> str:
    """`AB:CD:...`: the SHA-256 fingerprint of a PEM certificate (what clients pin)."""
    return fingerprint(ssl.PEM_cert_to_DER_cert(Path(cert_path).read_text()))


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx
