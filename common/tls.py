"""Mutual TLS between edges and the cloud: certificate files, their checks, and a small CA to issue them.

An edge's identity is its certificate: the cloud's gRPC server asks every client for a certificate
signed by the fleet's CA, and the certificate's common name (CN) is the only edge id that client may
speak for (`identity_of`; cloud/server enforces it in Hello, Infer and GetPolicy). The CA's key
never leaves the machine that issues certificates.

`FleetCA` makes the CA, the cloud's server certificate (its DNS names and addresses as SANs) and one
client certificate per edge, with the `cryptography` package (the policy signatures' library). It is
what `edgeglm-cloud certs` runs and what the tests use; any other CA (cert-manager, step-ca, openssl)
does as well, as long as an edge's CN is its edge id.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field

from common.files import write_atomic

DAYS_CA = 3650
DAYS_LEAF = 825


class TlsError(ValueError):
    """A TLS file that is missing, unreadable or not what it should be; the message names it."""


class ServerTlsConfig(BaseModel):
    """The cloud's side: its certificate and the CA whose client certificates it accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: Path = Field(..., description="The server's certificate chain (PEM).")
    key_file: Path = Field(..., description="The server's private key (PEM).")
    client_ca_file: Path = Field(..., description="CA certificate(s) (PEM) that sign the edges' certificates.")
    revoked_file: Path | None = Field(
        None, description="Serials refused although the CA signed them (`edgeglm-cloud pki revoke`); re-read on change."
    )


class ClientTlsConfig(BaseModel):
    """An edge's side: the CA that signed the cloud's certificate, and the edge's own certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path = Field(..., description="CA certificate(s) (PEM) that sign the cloud's certificate.")
    cert_file: Path = Field(..., description="This edge's certificate (PEM); its CN must be the edge id.")
    key_file: Path = Field(..., description="This edge's private key (PEM).")
    server_name: str = Field(
        "", description="Name to check the cloud's certificate against; empty: the target's host name."
    )


def files_stamp(*paths: Path) -> tuple[tuple[int, int], ...]:
    """(modification time, size) of each file, to see a rotated certificate (a Secret's files replaced)."""
    stamps = []
    for path in paths:
        try:
            status = path.stat()
        except OSError:
            stamps.append((-1, -1))
            continue
        stamps.append((status.st_mtime_ns, status.st_size))
    return tuple(stamps)


def read_pem(path: Path, what: str) -> bytes:
    """A PEM file's bytes; TlsError naming `what` and the file when it is missing or not PEM."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TlsError(f"{what} {path} cannot be read ({err})") from err
    if b"-----BEGIN " not in data:
        raise TlsError(f"{what} {path} is not a PEM file (no -----BEGIN line)")
    return data


def client_ssl_context(tls: ClientTlsConfig, what: str) -> ssl.SSLContext:
    """An SSL context that checks the server against `tls.ca_file` and shows this client's certificate.

    For clients that take a context (paho-mqtt's `tls_set_context`); `what` names the config section in
    errors. The server's name is checked against the host connected to.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cadata=read_pem(tls.ca_file, f"{what}.ca_file").decode())
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as err:
        raise TlsError(f"{what}: {tls.cert_file} and {tls.key_file} are not a certificate and its key ({err})") from err
    return context


def validity_problem(cert_file: Path, now: datetime.datetime | None = None) -> str | None:
    """Why the certificate in `cert_file` would be refused by its validity dates (None: it is within them)."""
    try:
        cert = x509.load_pem_x509_certificate(read_pem(cert_file, "certificate"))
    except (TlsError, ValueError) as err:
        return str(err)
    now = now or datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        return (
            f"certificate {cert_file} expired at {cert.not_valid_after_utc.isoformat(timespec='seconds')}; "
            "ask for a new one (edgeglm-cloud pki issue-edge) and put it in its place"
        )
    if now < cert.not_valid_before_utc:
        return f"certificate {cert_file} is not valid before {cert.not_valid_before_utc.isoformat(timespec='seconds')}"
    return None


def common_name(cert_pem: bytes) -> str:
    """The subject CN of a PEM certificate ("" when it has none)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


SPIFFE_PREFIX = "spiffe://edgeglm/"


@dataclass(frozen=True)
class Identity:
    """Who a client certificate says its holder is: an edge (and its site, when the certificate names one)."""

    edge_id: str
    site_id: str | None
    serial: int


def identity_of_cert(cert: x509.Certificate) -> Identity:
    """The identity a certificate carries: its `spiffe://edgeglm/[site/S/]edge/E` URI SAN, else its CN."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    for uri in uris:
        if uri.startswith(SPIFFE_PREFIX):
            parts = uri.removeprefix(SPIFFE_PREFIX).split("/")
            if len(parts) == 2 and parts[0] == "edge" and parts[1]:
                return Identity(parts[1], None, cert.serial_number)
            if len(parts) == 4 and parts[0] == "site" and parts[2] == "edge" and parts[1] and parts[3]:
                return Identity(parts[3], parts[1], cert.serial_number)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Identity(str(names[0].value) if names else "", None, cert.serial_number)


def identity_of(auth_context: Mapping[str, Iterable[bytes]]) -> Identity | None:
    """The identity of a gRPC peer's client certificate; None on a connection without TLS."""
    pem = list(auth_context.get("x509_pem_cert", ()))
    return _identity_of_pem(pem[0]) if pem else None


@functools.lru_cache(maxsize=4096)
def _identity_of_pem(pem: bytes) -> Identity:
    """Parsed once per certificate: every unary call of a connection shows the same one."""
    return identity_of_cert(x509.load_pem_x509_certificate(pem))


class RevocationList:
    """Serial numbers the cloud refuses, from a text file (one hex serial a line, # comments), re-read on change."""

    def __init__(self, path: Path) -> None:
        """Read `path` now (a missing file: nothing revoked yet) and whenever its modification time changes."""
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._reload()

    def revoked(self, serial: int) -> bool:
        """Whether the certificate with `serial` is revoked (the file re-read first if it changed)."""
        self._reload()
        return serial in self._serials

    def _reload(self) -> None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._serials = None, frozenset()
            return
        stamp = (status.st_mtime_ns, status.st_size)
        if stamp == self._stamp:
            return
        lines = self.path.read_text().splitlines()
        serials = {int(line.split("#")[0].strip(), 16) for line in lines if line.split("#")[0].strip()}
        self._stamp, self._serials = stamp, frozenset(serials)


@dataclass(frozen=True)
class Issued:
    """The files of one issued certificate."""

    cert_file: Path
    key_file: Path


class FleetCA:
    """A CA on disk (ca.crt, ca.key) that issues the cloud's and the edges' certificates."""

    def __init__(self, folder: Path) -> None:
        """The CA in `folder`; `create` makes it when it is not there yet."""
        self.folder = folder
        self.cert_file = folder / "ca.crt"
        self.key_file = folder / "ca.key"

    def create(self, name: str = "edgeglm-fleet-ca") -> FleetCA:
        """Make the CA's key and self-signed certificate (refuses to overwrite an existing CA)."""
        if self.key_file.exists():
            raise TlsError(f"{self.key_file} exists: a CA is there already (its certificates would stop working)")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=DAYS_CA))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_key(self.key_file, key)
        write_atomic(self.cert_file, cert.public_bytes(serialization.Encoding.PEM))
        return self

    def issue_server(self, out: Path, names: list[str]) -> Issued:
        """The cloud's certificate for its DNS names and IP addresses (`names`), CN the first of them."""
        if not names:
            raise TlsError("a server certificate needs at least one DNS name or address")
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        return self._issue(out, names[0], sans, ExtendedKeyUsageOID.SERVER_AUTH)

    def issue_edge(self, out: Path, edge_id: str, site_id: str | None = None, days: int = DAYS_LEAF) -> Issued:
        """An edge's client certificate: CN the edge id, a `spiffe://edgeglm/...` URI SAN with its site."""
        for name, value in (("edge id", edge_id), ("site id", site_id or "x")):
            if not value or "/" in value or not value.isprintable():
                raise TlsError(f"{value!r} is not an {name} a certificate can carry")
        path = f"site/{site_id}/edge/{edge_id}" if site_id else f"edge/{edge_id}"
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(SPIFFE_PREFIX + path)]
        return self._issue(out, edge_id, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days)

    @property
    def issued_file(self) -> Path:
        """Every certificate this CA issued, one JSON line each (serial, CN, not_after)."""
        return self.folder / "issued.jsonl"

    @property
    def revoked_file(self) -> Path:
        """The serials revoked, one hex serial a line: the cloud's server.tls.revoked_file."""
        return self.folder / "revoked.txt"

    def revoke(self, edge_id: str) -> list[str]:
        """Revoke every certificate issued for `edge_id`; the hex serials added to `revoked_file`."""
        issued = (
            [json.loads(line) for line in self.issued_file.read_text().splitlines()]
            if self.issued_file.exists()
            else []
        )
        serials = [entry["serial"] for entry in issued if entry["cn"] == edge_id]
        if not serials:
            raise TlsError(f"this CA ({self.folder}) issued no certificate for {edge_id!r}")
        known = self.revoked_file.read_text() if self.revoked_file.exists() else ""
        added = [serial for serial in serials if serial not in known.split()]
        write_atomic(self.revoked_file, (known + "".join(f"{serial}  # {edge_id}\n" for serial in added)).encode())
        return added

    def _issue(
        self,
        out: Path,
        cn: str,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        days: int = DAYS_LEAF,
    ) -> Issued:
        ca_key = serialization.load_pem_private_key(read_pem(self.key_file, "CA key"), password=None)
        ca_cert = x509.load_pem_x509_certificate(read_pem(self.cert_file, "CA certificate"))
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{self.key_file} is not an EC key")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # A lifetime of days <= 0 (tests of expiry) lies wholly in the past.
            .not_valid_before(now - datetime.timedelta(minutes=5) + min(0, days - 1) * datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        out.mkdir(parents=True, exist_ok=True)
        issued = Issued(out / f"{cn}.crt", out / f"{cn}.key")
        _write_key(issued.key_file, key)
        write_atomic(issued.cert_file, cert.public_bytes(serialization.Encoding.PEM))
        record = {"serial": f"{cert.serial_number:x}", "cn": cn, "not_after": cert.not_valid_after_utc.isoformat()}
        with self.issued_file.open("a") as log:
            log.write(json.dumps(record) + "\n")
        return issued


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_atomic(path, pem, mode=0o600)
