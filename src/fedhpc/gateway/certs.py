"""``fedhpc certs init|issue``: a private CA, the gateway's server certificate,
worker certificates (mutual TLS) and worker tokens."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedhpc.errors import ConfigError

VALID_DAYS = 825


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _cert(subject: str, key, issuer_cert, issuer_key, *, ca: bool, sans=(), usage=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_cert.subject if issuer_cert else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _san(host: str):
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def init(directory: Path, hosts: list[str]) -> list[Path]:
    """Create ca.pem/ca.key, server.pem/server.key (SANs = ``hosts``) and an empty tokens.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "ca.key").exists():
        raise ConfigError(f"{directory / 'ca.key'} exists: refusing to overwrite a CA (use another --dir)")
    ca_key = _key()
    ca = _cert("fedhpc CA", ca_key, None, None, ca=True)
    server_key = _key()
    server = _cert(hosts[0], server_key, ca, ca_key, ca=False, sans=[_san(h) for h in hosts],
                   usage=ExtendedKeyUsageOID.SERVER_AUTH)
    _write_key(directory / "ca.key", ca_key)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / "server.key", server_key)
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    tokens = directory / "tokens.txt"
    tokens.touch(mode=0o600)
    return [directory / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "tokens.txt")]


def issue_slots(directory: Path, name: str, count: int) -> list[Path]:
    """``count`` workers' credentials, one per remote client slot: ``NAME-0`` .. ``NAME-{count-1}``
    (each its own certificate, key and token: the gateway lets one token play one slot)."""
    if count < 1:
        raise ConfigError(f"--count must be >= 1, got {count}")
    files: list[Path] = []
    for k in range(count):
        files += issue(directory, slot_name(name, k))[0]
    return files


def slot_name(name: str, k: int) -> str:
    """The worker name of slot ``k`` of the set ``name`` (files ``NAME-K.token/.pem/.key``)."""
    return f"{name}-{k}"


def issue(directory: Path, name: str) -> tuple[list[Path], str]:
    """A worker certificate ``NAME.pem``/``NAME.key`` signed by the CA, and a new token
    appended to tokens.txt; returns (files, token). The certificate's common name is
    ``NAME``, which the gateway requires the token's name to match under mutual TLS."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"worker name '{name}' must be letters, digits, '-' or '_'")
    if (directory / f"{name}.token").exists():
        raise ConfigError(f"{directory / (name + '.token')} exists: worker {name} has credentials already")
    try:
        ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no CA in {directory}: run `fedhpc certs init --dir {directory}` first") from None
    key = _key()
    cert = _cert(name, key, ca, ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(directory / f"{name}.key", key)
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    token = secrets.token_urlsafe(32)
    with open(directory / "tokens.txt", "a") as f:
        f.write(f"{name} {token}\n")
    (directory / f"{name}.token").write_text(token + "\n")
    os.chmod(directory / f"{name}.token", 0o600)
    return [directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.token"], token
