"""TLS certificates and SuperNode authentication keys for a fedprune deployment.

``create_certificates`` writes, into a directory the user names:

- ``ca.crt`` / ``ca.key``: a private certificate authority (the root certificate every
  SuperNode and CLI is given with ``--root-certificates`` / ``root-certificates``);
- ``server.crt`` / ``server.key``: the SuperLink's certificate, signed by the CA, with one
  subject alternative name per host (DNS names and IP addresses) it is reached under;
- ``nodes/<name>`` / ``nodes/<name>.pub``: one ECDSA P-384 key pair per edge node, in the
  OpenSSH formats that ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` read.

Private keys are written 0600; directories this module creates are 0700, and a directory
that already exists keeps its mode (``--out .`` or ``--out ~`` must not lock the user out of
their own folder). Existing material is never overwritten unless asked (``overwrite=True``),
so a second run cannot silently invalidate certificates already installed on edge devices.
Every file is written to a fresh temporary name (``O_CREAT | O_EXCL | O_NOFOLLOW``) and
renamed into place, and a target that is a symbolic link (even a dangling one) is refused:
a planted link can never make this module write a key somewhere else. Arguments (hosts,
node names, counts, validity) are checked before anything is written. Nothing here is meant
to be committed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import stat
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
MAX_DAYS = 36_500  # 100 years; far beyond that X.509 dates and Python's datetime overflow
MAX_NODES = 10_000


class CertificateError(RuntimeError):
    """Material exists and overwriting was not asked for, or an argument is unusable.

    ``argument`` names what was wrong (``directory``, ``hosts``, ``nodes``, ``node_names``, ``days``)
    so a command line can blame the option that carried it.
    """

    def __init__(self, message: str, argument: str = "directory") -> None:
        super().__init__(message)
        self.argument = argument


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


def _exists(path: Path) -> bool:
    """Whether a regular file is at ``path``; a symbolic link (even a dangling one) or a non-file is refused."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise CertificateError(f"{path} is a symbolic link; refusing to write key material through it")
    if not stat.S_ISREG(info.st_mode):
        raise CertificateError(f"{path} exists and is not a regular file")
    return True


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new temporary file (0600 from the start, never through a link), then rename it.

    ``os.replace`` swaps the directory entry itself, so even a link planted at ``path`` after
    ``_exists`` is replaced, never followed.
    """
    for attempt in range(100):
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise CertificateError(f"cannot create a temporary file next to {path}")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # O_CREAT's mode is filtered by the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_private(path: Path, data: bytes) -> None:
    _write_file(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write_file(path, data, 0o644)


def _private_dir(path: Path) -> None:
    """Create ``path`` 0700 if it does not exist; an existing directory keeps its owner's mode."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; this directory is ours
        return
    if stat.S_ISLNK(info.st_mode):
        raise CertificateError(f"{path} is a symbolic link; give the directory it points to")
    if not stat.S_ISDIR(info.st_mode):
        raise CertificateError(f"{path} exists and is not a directory")


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not _DNS_NAME.fullmatch(host) or len(host) > 253:
            raise CertificateError(f"'{host}' is neither an IP address nor a DNS name", "hosts") from None
        return x509.DNSName(host)


_DNS_NAME = re.compile(r"(\*\.)?(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
_NODE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def check_node_name(name: str) -> None:
    """A node name becomes a file name under ``nodes/``: letters, digits, '-', '_', '.'; no leading dot."""
    if not _NODE_NAME.fullmatch(name):
        raise CertificateError(f"node name '{name}' may only use letters, digits, '-', '_' and '.' (not first), "
                               "at most 64 characters", "node_names")


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


def _create_server_cert(directory: Path, hosts: list[str], sans: list[x509.GeneralName], ca_cert: x509.Certificate,
                        ca_key: ec.EllipticCurvePrivateKey, days: int) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    start, end = _validity(days)
    common_name = hosts[0] if len(hosts[0]) <= 64 else "fedprune SuperLink"  # X.509 caps it; the SANs count
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    _write_private(directory / SERVER_KEY, _pem_key(key))
    _write_public(directory / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))


def _node_paths(directory: Path, name: str) -> tuple[Path, Path]:
    nodes = directory / NODES_DIR
    return nodes / name, nodes / f"{name}.pub"


def create_node_keys(directory: str | Path, name: str, *, overwrite: bool = False) -> NodeKeys:
    """An ECDSA P-384 key pair for one SuperNode: OpenSSH private key (0600) and public key."""
    check_node_name(name)
    directory = Path(directory).expanduser().absolute()
    private, public = _node_paths(directory, name)
    _private_dir(directory)
    _private_dir(private.parent)
    if any([_exists(private), _exists(public)]) and not overwrite:
        raise CertificateError(f"{private} already exists; pass overwrite to replace it")
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    _write_public(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                        serialization.PublicFormat.OpenSSH) + b"\n")
    return NodeKeys(name, private, public)


def _node_names(nodes: list[str] | tuple[str, ...] | int) -> list[str]:
    if isinstance(nodes, int):
        if not 0 <= nodes <= MAX_NODES:
            raise CertificateError(f"{nodes} key pairs: give 0 to {MAX_NODES}", "nodes")
        return [f"node-{i}" for i in range(nodes)]
    names = list(nodes)
    for name in names:
        check_node_name(name)
    if len(set(names)) != len(names):
        raise CertificateError("node names must be distinct", "node_names")
    if len(names) > MAX_NODES:
        raise CertificateError(f"{len(names)} node names: give at most {MAX_NODES}", "node_names")
    return names


def create_certificates(directory: str | Path, hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS,
                        nodes: list[str] | tuple[str, ...] | int = (), *, days: int = 365,
                        overwrite: bool = False) -> Material:
    """Write a new CA, a SuperLink certificate valid for ``hosts``, and one key pair per node name.

    ``nodes`` is a list of names or a count (``node-0`` … ``node-{n-1}``). Every argument is
    checked, and every target file too (no links; nothing existing unless ``overwrite``),
    before the first byte is written. With ``overwrite`` all material is replaced by new
    material from a new CA.
    """
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise CertificateError("give at least one host (DNS name or IP) the SuperLink is reached under", "hosts")
    sans = [_san(h) for h in hosts]
    names = _node_names(nodes)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise CertificateError(f"{days} days: give 1 to {MAX_DAYS}", "days")
    directory = Path(directory).expanduser().absolute()
    _private_dir(directory)
    targets = [directory / p for p in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)]
    targets += [path for name in names for path in _node_paths(directory, name)]
    existing = [str(path.relative_to(directory)) for path in targets if _exists(path)]
    if existing and not overwrite:
        raise CertificateError(f"{directory} already holds {', '.join(existing)}; pass overwrite to replace it")
    if names:
        _private_dir(directory / NODES_DIR)
    ca_cert, ca_key = _create_ca(directory, days)
    _create_server_cert(directory, hosts, sans, ca_cert, ca_key, days)
    made = [create_node_keys(directory, n, overwrite=overwrite) for n in names]
    return Material(directory, directory / CA_CERT, directory / CA_KEY, directory / SERVER_CERT,
                    directory / SERVER_KEY, made)


def server_hosts(cert_path: str | Path) -> list[str]:
    """The subject alternative names of a certificate (to check which hosts it is valid for)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in names.get_values_for_type(x509.DNSName)] + \
        [str(v) for v in names.get_values_for_type(x509.IPAddress)]
