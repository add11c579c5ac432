"""MQTT with TLS and the K3s broker's ACL: a certificate is an edge's identity there too (real mosquitto).

The broker runs the listener of deploy/k3s/base/mosquitto (client certificate required, CN as user
name) with that folder's ACL file, the very one the cluster uses. The cloud's bridge and an edge
connect with their certificates; then another edge, holding a valid certificate of its own, tries
what issue 13's findings list: publish samples as gw-1, forge verdicts and acks for gw-1, and fake
the cloud's presence. A client without a certificate does not get in at all.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from common.tls import ClientTlsConfig, FleetCA, client_ssl_context
from protos import session_pb2, verdict_pb2
from sim.fleet.broker import BrokerTls
from tests.helpers.broker import MosquittoBroker, running_broker
from tests.helpers.mqtt import EDGE, bridge_config, cloud, edge, edge_config, samples
from tests.helpers.wait import wait_until

ACL = Path(__file__).resolve().parents[2] / "deploy" / "k3s" / "base" / "mosquitto" / "acl-tls"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, ClientTlsConfig | BrokerTls]:
    ca = FleetCA(tmp_path / "ca").create()
    broker = ca.issue_server(tmp_path / "ca", ["127.0.0.1", "localhost"])
    made: dict[str, ClientTlsConfig | BrokerTls] = {
        "broker": BrokerTls(ca.cert_file, broker.cert_file, broker.key_file, ACL)
    }
    for name in ("gw-1", "gw-2", "edgeglm-cloud"):
        issued = ca.issue_edge(tmp_path / "clients", name)
        made[name] = ClientTlsConfig(ca_file=ca.cert_file, cert_file=issued.cert_file, key_file=issued.key_file)
    return made


@pytest.fixture
def tls_broker(tmp_path: Path, pki: dict[str, Any]) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker", tls=pki["broker"]) as started:
        yield started


class Attacker:
    """A paho client with a certificate of its own (or none): connects, publishes, records what it reads."""

    def __init__(self, broker: MosquittoBroker, tls: ClientTlsConfig | None, ca_file: Path | None = None) -> None:
        self.connected = threading.Event()
        self.refused: list[str] = []
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="attacker", protocol=mqtt.MQTTv5)
        if tls is not None:
            self._client.tls_set_context(client_ssl_context(tls, "attacker"))
        else:  # TLS that checks the broker but shows no certificate of its own
            context = ssl.create_default_context(cafile=str(ca_file))
            self._client.tls_set_context(context)
        self._client.on_connect = lambda *a: self.connected.set() if not a[3].is_failure else None
        self._client.connect_async(broker.host, broker.port)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


async def test_with_certificates_and_the_acl_an_edge_speaks_only_for_itself(
    tmp_path: Path, clip: Path, pki: dict[str, Any], tls_broker: MosquittoBroker
) -> None:
    good = samples(clip, 1, "honest")[0]
    forged = samples(clip, 1, "forged")[0]
    bridge = bridge_config(tls_broker, tls=pki["edgeglm-cloud"], client_id="edgeglm-cloud")
    async with cloud(tmp_path / "cloud", clip, bridge) as replica, edge(edge_config(tls_broker, tls=pki[EDGE])) as gw:
        await wait_until(lambda: replica.bridge.connected, "the cloud's bridge over TLS")
        assert gw.uplink is not None
        await gw.submit(good)
        await wait_until(lambda: gw.verdict_ids() == {good.sample_id}, "the honest sample's verdict over TLS")
        other = Attacker(tls_broker, pki["gw-2"])
        assert await asyncio.to_thread(other.connected.wait, 10), "gw-2 holds a valid certificate: it connects"
        fake = verdict_pb2.Verdict(sample_id="fake", edge_id=EDGE, decision=verdict_pb2.DECISION_CONFIRMED)
        other.publish(f"edgeglm/{EDGE}/samples", forged.SerializeToString())  # as gw-1
        other.publish(f"edgeglm/{EDGE}/verdicts", session_pb2.CloudMessage(verdict=fake).SerializeToString())
        other.publish(
            f"edgeglm/{EDGE}/verdicts", session_pb2.CloudMessage(ack=session_pb2.Ack(sample_id="x")).SerializeToString()
        )
        other.publish("edgeglm/cloud/fake-replica/status", b"online", retain=True)
        other.publish(f"edgeglm/{EDGE}/policy", b"\x0a\x00", retain=True)
        # What gw-2 may do still works: its own samples reach the cloud (the broker is not just closed).
        own = samples(clip, 1, "gw2-own", edge_id="gw-2")[0]
        other.publish("edgeglm/gw-2/samples", own.SerializeToString())
        await wait_until(
            lambda: replica.counter("edgeglm_cloud_samples_received_total", transport="mqtt") >= 2,
            "gw-2's own sample at the cloud",
        )
        other.close()
        anonymous = Attacker(tls_broker, None, ca_file=pki["broker"].ca_file)
        got_in = await asyncio.to_thread(anonymous.connected.wait, 3)
        anonymous.close()
        judged = {
            s: await replica.store.get(s, edge) is not None
            for s, edge in (("honest-0", EDGE), ("forged-0", EDGE), ("gw2-own-0", "gw-2"))
        }
    assert judged == {"honest-0": True, "forged-0": False, "gw2-own-0": True}
    assert [v.sample_id for v in gw.verdicts] == [good.sample_id], "no forged verdict reached gw-1"
    assert all(ack.sample_id != "x" for ack in gw.acks)
    assert all(policy.signature for policy in gw.policies), "no policy of gw-2's making reached gw-1"
    assert not got_in, "a client without a certificate is not let in"
