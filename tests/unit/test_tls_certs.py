"""`edgeglm-cloud certs`: a fleet CA, the cloud's server certificate and an edge's client certificate."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from typer.testing import CliRunner

from cloud.cli import app
from common.tls import common_name


def test_certs_init_and_issue_make_a_ca_a_server_and_an_edge_certificate(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(
        app, ["certs", "init", "--out", str(tmp_path / "ca"), "--name", "cloud.example", "--name", "10.0.0.5"]
    )
    issued = runner.invoke(
        app, ["certs", "issue", "--ca", str(tmp_path / "ca"), "--edge", "gw-7", "--out", str(tmp_path / "e")]
    )
    again = runner.invoke(app, ["certs", "init", "--out", str(tmp_path / "ca"), "--name", "x"])
    assert made.exit_code == 0 and issued.exit_code == 0, made.output + issued.output
    server = x509.load_pem_x509_certificate((tmp_path / "ca" / "cloud.example.crt").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["cloud.example"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert common_name((tmp_path / "e" / "gw-7.crt").read_bytes()) == "gw-7"
    for key in (tmp_path / "ca" / "ca.key", tmp_path / "e" / "gw-7.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert again.exit_code == 1 and "a CA is there already" in again.output
