"""TLS certificates and SuperNode authentication keys for a fedprune deployment.

``create_certificates`` writes, into a directory the user names:

- ``ca.crt`` / ``ca.key``: a private certificate authority (the root certificate every
  SuperNode and CLI is given with ``--root-certificates`` / ``root-certificates``);
- ``server.crt`` / ``server.key``: the SuperLink's certificate, signed by the CA, with one
  subject alternative name per host (DNS names and IP addresses) it is reached under;
- ``nodes/<name>`` / ``nodes/<name>.pub``: one ECDSA P-384 key pair per edge node, in the
  OpenSSH formats that ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` read.

Private keys are written 0600 inside 0700 directories; existing material is never
overwritten unless asked (``overwrite=True``), so a second run cannot silently invalidate
certificates already installed on edge devices. Nothing here is meant to be committed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
NODES_DIR = "nodes"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class CertificateError(RuntimeError):
    """Material exists and overwriting was not asked for, or an argument is unusable."""


@dataclass(frozen=True)
class NodeKeys:
    """One edge node's authentication key pair (OpenSSH formats)."""

    name: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class Material:
    """Paths of everything ``create_certificates`` wrote."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    nodes: list[NodeKeys] = field(default_factory=list)


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # O_CREAT's mode is filtered by the umask and ignored for existing files


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise CertificateError(f"'{host}' is neither an IP address nor a DNS name") from None
        return x509.DNSName(host)


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def _create_ca(directory: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedprune deployment CA")])
    start, end = _validity(days)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    _write_private(directory / CA_KEY, _pem_key(key))
    _write_public(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{directory / CA_KEY} is not an EC private key")
    return cert, key


def _create_server_cert(directory: Path, hosts: list[str], ca_cert: x509.Certificate,
                        ca_key: ec.EllipticCurvePrivateKey, days: int) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    start, end = _validity(days)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    _write_private(directory / SERVER_KEY, _pem_key(key))
    _write_public(directory / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))


def create_node_keys(directory: Path, name: str, *, overwrite: bool = False) -> NodeKeys:
    """An ECDSA P-384 key pair for one SuperNode: OpenSSH private key (0600) and public key."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise CertificateError(f"node name '{name}' may only use letters, digits, '-', '_' and '.'")
    nodes = Path(directory) / NODES_DIR
    _private_dir(nodes)
    private, public = nodes / name, nodes / f"{name}.pub"
    if not overwrite and (private.exists() or public.exists()):
        raise CertificateError(f"{private} already exists; pass overwrite to replace it")
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    _write_public(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                        serialization.PublicFormat.OpenSSH) + b"\n")
    return NodeKeys(name, private, public)


def create_certificates(directory: str | Path, hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS,
                        nodes: list[str] | tuple[str, ...] | int = (), *, days: int = 365,
                        overwrite: bool = False) -> Material:
    """Write a CA, a SuperLink certificate valid for ``hosts``, and one key pair per node name.

    ``nodes`` is a list of names or a count (``node-0`` … ``node-{n-1}``). An existing CA in
    ``directory`` is reused to sign a new server certificate only with ``overwrite``.
    """
    directory = Path(directory).expanduser().resolve()
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise CertificateError("give at least one host (DNS name or IP) the SuperLink is reached under")
    names = [f"node-{i}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
    if len(set(names)) != len(names):
        raise CertificateError("node names must be distinct")
    if days < 1:
        raise CertificateError("days must be >= 1")
    _private_dir(directory)
    existing = [p for p in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY) if (directory / p).exists()]
    existing += [f"{NODES_DIR}/{n}" for n in names if (directory / NODES_DIR / n).exists()]
    if existing and not overwrite:
        raise CertificateError(f"{directory} already holds {', '.join(existing)}; pass overwrite to replace it")
    ca_cert, ca_key = _create_ca(directory, days)
    _create_server_cert(directory, hosts, ca_cert, ca_key, days)
    made = [create_node_keys(directory, n, overwrite=overwrite) for n in names]
    return Material(directory, directory / CA_CERT, directory / CA_KEY, directory / SERVER_CERT,
                    directory / SERVER_KEY, made)


def server_hosts(cert_path: str | Path) -> list[str]:
    """The subject alternative names of a certificate (to check which hosts it is valid for)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in names.get_values_for_type(x509.DNSName)] + \
        [str(v) for v in names.get_values_for_type(x509.IPAddress)]
