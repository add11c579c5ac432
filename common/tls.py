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
import ipaddress
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


class ClientTlsConfig(BaseModel):
    """An edge's side: the CA that signed the cloud's certificate, and the edge's own certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path = Field(..., description="CA certificate(s) (PEM) that sign the cloud's certificate.")
    cert_file: Path = Field(..., description="This edge's certificate (PEM); its CN must be the edge id.")
    key_file: Path = Field(..., description="This edge's private key (PEM).")
    server_name: str = Field(
        "", description="Name to check the cloud's certificate against; empty: the target's host name."
    )


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


def common_name(cert_pem: bytes) -> str:
    """The subject CN of a PEM certificate ("" when it has none)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def identity_of(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The client certificate's CN from a gRPC auth context; None on a connection without TLS."""
    names = list(auth_context.get("x509_common_name", ()))
    return names[0].decode() if names else None


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

    def issue_edge(self, out: Path, edge_id: str) -> Issued:
        """An edge's client certificate: CN the edge id, for client authentication only."""
        if not edge_id or "/" in edge_id:
            raise TlsError(f"{edge_id!r} is not an edge id a certificate can carry")
        return self._issue(out, edge_id, [], ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(self, out: Path, cn: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> Issued:
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
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=DAYS_LEAF))
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
        return issued


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_atomic(path, pem, mode=0o600)
