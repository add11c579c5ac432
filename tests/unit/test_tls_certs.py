"""`edgeglm-cloud pki`: a fleet CA, the cloud's server certificate, edges' client certificates, revocation."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from typer.testing import CliRunner

from cloud.cli import app
from common.tls import RevocationList, identity_of_cert


def test_pki_makes_a_ca_a_server_and_edge_certificates_and_revokes_them(tmp_path: Path) -> None:
    runner = CliRunner()
    ca, out = str(tmp_path / "ca"), str(tmp_path / "e")
    made = runner.invoke(app, ["pki", "init", "--dir", ca])
    server = runner.invoke(app, ["pki", "issue-server", "--dir", ca, "cloud.example", "10.0.0.5", "--out", ca])
    edge = runner.invoke(app, ["pki", "issue-edge", "--dir", ca, "gw-7", "--site", "plant-2", "--out", out])
    again = runner.invoke(app, ["pki", "init", "--dir", ca])
    assert (made.exit_code, server.exit_code, edge.exit_code) == (0, 0, 0), made.output + server.output + edge.output
    cert = x509.load_pem_x509_certificate((tmp_path / "ca" / "cloud.example.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["cloud.example"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    issued = x509.load_pem_x509_certificate((tmp_path / "e" / "gw-7.crt").read_bytes())
    identity = identity_of_cert(issued)
    assert (identity.edge_id, identity.site_id) == ("gw-7", "plant-2")  # from spiffe://edgeglm/site/plant-2/edge/gw-7
    for key in (tmp_path / "ca" / "ca.key", tmp_path / "e" / "gw-7.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert again.exit_code == 1 and "a CA is there already" in again.output
    deny = RevocationList(tmp_path / "ca" / "revoked.txt")
    assert not deny.revoked(issued.serial_number)
    revoked = runner.invoke(app, ["pki", "revoke", "--dir", ca, "gw-7"])
    assert revoked.exit_code == 0 and "revoked 1 certificate(s) of gw-7" in revoked.output
    assert deny.revoked(issued.serial_number), "the list is re-read when its file changes"
    unknown = runner.invoke(app, ["pki", "revoke", "--dir", ca, "gw-nobody"])
    assert unknown.exit_code == 1 and "issued no certificate for 'gw-nobody'" in unknown.output
