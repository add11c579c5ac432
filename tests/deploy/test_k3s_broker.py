"""The broker config of deploy/k3s, run by a real mosquitto: TLS with client certificates, per-edge ACL.

The ConfigMap's mosquitto.conf and ACL files are used as rendered; only what belongs to the pod is
moved to this machine (the /mosquitto folders become temporary ones, the listener a loopback port that
the broker's certificate also names, and mosquitto keeps the current user instead of switching to
`mosquitto`). Certificates are made by running
the README's own openssl commands: a CA, the broker's certificate, and one client certificate per edge
whose CN is the edge id.
"""

from __future__ import annotations

import contextlib
import getpass
import queue
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from common.tls import ClientTlsConfig, client_ssl_context
from common.topics import availability_topic
from edge.homeassistant import Discovery
from tests.helpers.broker import free_port, require_mosquitto
from tests.helpers.k3s import K3S, by_kind, find, render

WAIT_S = 20.0
HOST = "127.0.0.1"


def _readme_block() -> str:
    """The shell block of the README's "Mosquitto TLS" section, continuation lines joined."""
    text = (K3S / "README.md").read_text()
    section = text[text.index("**Mosquitto TLS.**") :]
    block = section[section.index("```sh") + len("```sh") : section.index("```", section.index("```sh") + 5)]
    return block.replace("\\\n", " ")


def _readme_certificates(folder: Path, clients: tuple[str, ...]) -> None:
    """Run the README's openssl commands in `folder`: the CA, the broker's certificate, and one client
    certificate per name (the README's loop over client names, run for these). The broker's certificate
    also names 127.0.0.1, where the test's broker listens instead of the Service."""
    lines = [line.strip() for line in _readme_block().splitlines()]
    commands = [line for line in lines if line.startswith("openssl")]
    shared = [c for c in commands if "$name" not in c]
    per_client = [c for c in commands if "$name" in c]
    assert len(shared) == 3 and len(per_client) == 2, "the README's certificate steps changed: update this test"
    assert any(line.startswith("for name in edgeglm-cloud ") for line in lines), "the cloud's certificate is made"
    shared = [c.replace('DNS:mosquitto"', 'DNS:mosquitto,IP:127.0.0.1"') for c in shared]
    script = shared + [c.replace("$name", name) for name in clients for c in per_client]
    for command in script:
        result = subprocess.run(
            ["bash", "-c", command], cwd=folder, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, f"README step failed: {command}\n{result.stderr}"


def _broker_files(folder: Path) -> tuple[Path, int]:
    """The rendered broker config moved into `folder`: (mosquitto.conf, TLS port)."""
    config_map = next(o for o in by_kind(render("fleet"), "ConfigMap") if o["metadata"]["name"].startswith("mosq"))
    files: dict[str, str] = config_map["data"]
    listeners = re.findall(r"^listener .*$", files["mosquitto.conf"], flags=re.MULTILINE)
    assert listeners == ["listener 8883"], "the broker has one listener, TLS"
    tls_port = free_port()
    (folder / "config").mkdir()
    (folder / "data").mkdir()
    for name, rendered in files.items():
        text = rendered.replace("/mosquitto/", f"{folder}/")
        text = re.sub(r"^listener 8883$", f"listener {tls_port} {HOST}", text, flags=re.MULTILINE)
        text = text.replace("log_dest stdout", f"log_dest file {folder}/mosquitto.log")
        (folder / "config" / name).write_text(text)
    conf = folder / "config" / "mosquitto.conf"
    conf.write_text(conf.read_text() + f"\nuser {getpass.getuser()}\n")
    return conf, tls_port


@contextlib.contextmanager
def _running(command: list[str], ports: list[int], log: Path) -> Iterator[None]:
    """Run `command` until the block ends; it must accept connections on every port within WAIT_S."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + WAIT_S
        waiting = list(ports)
        while waiting:
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode() if process.stderr and process.poll() is not None else ""
                logged = log.read_text() if log.exists() else ""
                raise RuntimeError(f"mosquitto did not start with the rendered config:\n{error}{logged}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, waiting[0]), timeout=1):
                waiting.pop(0)
                continue
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        try:
            process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(WAIT_S)
        if process.stderr:
            process.stderr.close()


class Client:
    """A paho MQTT 5 client that collects what it receives in a queue."""

    def __init__(
        self,
        client_id: str,
        port: int,
        certs: Path | None = None,
        name: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if certs is not None:
            self.client.tls_set(
                ca_certs=str(certs / "ca.crt"),
                certfile=str(certs / f"{name}.crt") if name else None,
                keyfile=str(certs / f"{name}.key") if name else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if context is not None:
            self.client.tls_set_context(context)
        self.client.on_message = lambda _c, _u, message: self.received.put((message.topic, bytes(message.payload)))
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(HOST, port)
        self.client.loop_start()

    def subscribe(self, *topics: str) -> None:
        """Subscribe at QoS 1 and wait for the broker's answer."""
        self._subscribed.clear()
        self.client.subscribe([(topic, 1) for topic in topics])
        assert self._subscribed.wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait until the broker acknowledged it (allowed or not)."""
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def next(self) -> tuple[str, bytes]:
        """The next message received."""
        return self.received.get(timeout=WAIT_S)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def require_openssl() -> str:
    """The openssl command the README uses; skips (fails under CI=true) when missing."""
    found = shutil.which("openssl")
    if found is None:
        from tests.helpers.k3s import missing_tool

        missing_tool("openssl")
    assert found is not None
    return found


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    binary = require_mosquitto()
    require_openssl()
    certs = tmp_path / "certs"
    certs.mkdir()
    _readme_certificates(certs, ("gw-01", "gw-02", "edgeglm-cloud", "edgeglm-viewer"))
    conf, tls_port = _broker_files(tmp_path)
    with _running([binary, "-c", str(conf)], [tls_port], tmp_path / "mosquitto.log"):
        yield certs, tls_port


def test_the_brokers_certificate_names_its_service(broker: tuple[Path, int]) -> None:
    certs, _ = broker
    certificate = x509.load_pem_x509_certificate((certs / "tls.crt").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    service = find(render("fleet"), "Service", "mosquitto")
    fqdn = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert fqdn in names.get_values_for_type(x509.DNSName)


def _clients(*clients: Client) -> Any:
    class _Closing:
        def __enter__(self) -> tuple[Client, ...]:
            return clients

        def __exit__(self, *_: object) -> None:
            for each in clients:
                each.close()

    return _Closing()


def test_an_edge_publishes_and_reads_only_under_its_own_id(broker: tuple[Path, int]) -> None:
    certs, tls_port = broker
    with _clients(
        Client("edgeglm-cloud-0", tls_port, certs, "edgeglm-cloud"),
        Client("gw-01", tls_port, certs, "gw-01"),
    ) as (cloud, edge):
        cloud.subscribe("$share/edgeglm-cloud/edgeglm/+/samples", "$share/edgeglm-cloud/edgeglm/+/models")
        edge.subscribe("edgeglm/gw-02/verdicts", "edgeglm/gw-01/verdicts")
        # Messages from one client are handled in order: when the allowed one arrives, a forged one
        # sent before it would have arrived first.
        edge.publish("edgeglm/gw-02/samples", b"forged")
        edge.publish("edgeglm/gw-01/samples", b"own")
        assert cloud.next() == ("edgeglm/gw-01/samples", b"own")
        edge.publish("edgeglm/gw-02/models", b"forged model request")
        edge.publish("edgeglm/gw-01/models", b"own model request")
        assert cloud.next() == ("edgeglm/gw-01/models", b"own model request")
        cloud.publish("edgeglm/gw-02/verdicts", b"not yours")
        cloud.publish("edgeglm/gw-01/verdicts", b"yours")
        assert edge.next() == ("edgeglm/gw-01/verdicts", b"yours")
        assert cloud.received.empty() and edge.received.empty()


def test_home_assistant_sees_an_edges_own_sensors_and_nothing_it_forges(broker: tuple[Path, int]) -> None:
    certs, tls_port = broker
    own, forged = Discovery("gw-01"), Discovery("gw-02")
    with _clients(
        Client("gw-01", tls_port, certs, "gw-01"),
        Client("home-assistant", tls_port, certs, "edgeglm-viewer"),
    ) as (edge, viewer):
        viewer.subscribe(
            "homeassistant/#", "edgeglm/+/availability", "edgeglm/+/+/last_event", "edgeglm/+/+/+/occupancy",
            "edgeglm/+/+/+/snapshot",
        )  # fmt: skip
        # The topics the edge's own code publishes (edge.homeassistant, edge.uplink.mqtt), for itself and,
        # forged, for another edge: each forged one goes first, so it would arrive before the allowed one.
        for ours, theirs in [
            (own.config_topic("binary_sensor", "x"), forged.config_topic("binary_sensor", "x")),
            (availability_topic("edgeglm", "gw-01"), availability_topic("edgeglm", "gw-02")),
            (own.occupancy_topic("cam0", "person"), forged.occupancy_topic("cam0", "person")),
            (own.last_event_topic("cam0"), forged.last_event_topic("cam0")),
            (f"{own.camera_topic('cam0')}/person/snapshot", f"{forged.camera_topic('cam0')}/person/snapshot"),
        ]:
            edge.publish(theirs, b"forged")
            edge.publish(ours, b"own")
            assert viewer.next() == (ours, b"own")
        assert viewer.received.empty()


# MQTT 3.1.1 CONNECT, clean session, keepalive 60 s, client id "nobody".
CONNECT = bytes([0x10, 18, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 6]) + b"nobody"


def test_clients_without_a_certificate_are_refused_on_the_tls_listener(broker: tuple[Path, int]) -> None:
    certs, tls_port = broker
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    with socket.create_connection((HOST, tls_port), timeout=WAIT_S) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="mosquitto.edgeglm.svc.cluster.local") as tls:
                tls.sendall(CONNECT)
                answer = tls.recv(16)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            answer = b""  # refused during the handshake (TLS 1.2) or right after it (TLS 1.3)
    assert answer == b"", f"the broker answered a client without a certificate: {answer!r}"


def _mounted_cloud_tls(certs: Path, folder: Path) -> ClientTlsConfig:
    """The rendered cloud.yaml's `mqtt.tls`, its Secret's files made as the README's kubectl line makes them."""
    line = next(line for line in _readme_block().splitlines() if "create secret generic edgeglm-mqtt-tls" in line)
    folder.mkdir()
    for source in re.findall(r"--from-file=(\S+)", line):
        key, _, local = source.partition("=")
        shutil.copy(certs / (local or key), folder / key)
    maps = by_kind(render("fleet"), "ConfigMap")
    config_map = next(o for o in maps if o["metadata"]["name"].startswith("edgeglm-cloud-config"))
    settings = yaml.safe_load(config_map["data"]["cloud.yaml"])["mqtt"]
    assert settings["port"] == 8883
    tls = ClientTlsConfig.model_validate(settings["tls"])
    moved = {name: folder / Path(getattr(tls, name)).name for name in ("ca_file", "cert_file", "key_file")}
    return tls.model_copy(update=moved)


def test_the_clouds_rendered_mqtt_settings_connect_as_the_cloud_user(broker: tuple[Path, int], tmp_path: Path) -> None:
    certs, tls_port = broker
    tls = _mounted_cloud_tls(certs, tmp_path / "mqtt-tls")
    with _clients(
        Client("edgeglm-cloud-0", tls_port, context=client_ssl_context(tls, "mqtt.tls")),
        Client("gw-01", tls_port, certs, "gw-01"),
    ) as (cloud, edge):
        cloud.subscribe("$share/edgeglm-cloud/edgeglm/+/samples")
        edge.subscribe("edgeglm/gw-01/verdicts")
        edge.publish("edgeglm/gw-01/samples", b"sample")
        assert cloud.next() == ("edgeglm/gw-01/samples", b"sample")
        cloud.publish("edgeglm/gw-01/verdicts", b"verdict")
        assert edge.next() == ("edgeglm/gw-01/verdicts", b"verdict")
