"""The gRPC uplink on a channel it was given, against a real cloud: several uplinks share one channel
(one HTTP/2 connection), each with its own Session, and stopping one leaves the channel to its owner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest
from pydantic import ValidationError

from edge.config import GrpcUplinkConfig
from edge.metrics import EdgeMetrics
from edge.uplink import UplinkHandlers
from edge.uplink.grpc import GrpcUplink, channel_options
from protos import policy_pb2, session_pb2, status_pb2, verdict_pb2
from tests.helpers.cloud import busy_frames, counter, make_config, make_sample, running
from tests.helpers.wait import wait_until


@dataclass
class Heard:
    """What came down to one uplink."""

    edge_id: str
    acks: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    policies: int = 0
    sessions: int = 0

    def handlers(self) -> UplinkHandlers:
        async def on_ack(ack: session_pb2.Ack) -> None:
            self.acks.append(ack.sample_id)

        async def on_verdict(verdict: verdict_pb2.Verdict) -> None:
            self.verdicts.append(verdict.sample_id)

        async def on_policy(_: policy_pb2.SignedPolicy) -> None:
            self.policies += 1

        def on_cloud_back() -> None:
            self.sessions += 1

        return UplinkHandlers(
            hello=lambda: session_pb2.Hello(edge_id=self.edge_id),
            status=lambda: status_pb2.EdgeStatus(edge_id=self.edge_id, state=status_pb2.EDGE_STATE_ONLINE),
            on_ack=on_ack,
            on_verdict=on_verdict,
            on_policy=on_policy,
            on_cloud_back=on_cloud_back,
            on_deferred=lambda *_: None,
        )


async def test_uplinks_sharing_a_channel_each_keep_a_session_and_leave_the_channel_open(
    tmp_path: Path, clip: Path
) -> None:
    frame = busy_frames(clip)[0]
    async with running(make_config(tmp_path, clip)) as service:
        config = GrpcUplinkConfig(target=f"127.0.0.1:{service.port}")
        metrics = EdgeMetrics()
        async with grpc.aio.insecure_channel(config.target, options=channel_options(config)) as channel:
            heard = [Heard(f"gw-{n}") for n in range(3)]
            uplinks = [GrpcUplink(config, h.handlers(), metrics, channel=channel, name=h.edge_id) for h in heard]
            for uplink in uplinks[:2]:
                await uplink.start()
            await wait_until(lambda: all(u.cloud_reachable for u in uplinks[:2]), "both sessions open")
            assert counter(service, "edgeglm_cloud_sessions_open") == 2
            for h, uplink in zip(heard[:2], uplinks, strict=False):
                assert uplink.send(
                    f"{h.edge_id}-a", make_sample(clip, frame, f"{h.edge_id}-a", h.edge_id).SerializeToString()
                )
            await wait_until(lambda: all(h.verdicts == [f"{h.edge_id}-a"] for h in heard[:2]), "a verdict each")

            await uplinks[0].stop()
            await wait_until(lambda: counter(service, "edgeglm_cloud_sessions_open") == 1, "one session closed")
            assert channel.get_state() != grpc.ChannelConnectivity.SHUTDOWN
            sample = make_sample(clip, frame, "gw-1-b", "gw-1")
            assert uplinks[1].send("gw-1-b", sample.SerializeToString())
            await wait_until(lambda: heard[1].verdicts == ["gw-1-a", "gw-1-b"], "the other uplink still served")

            await uplinks[1].stop()
            await uplinks[2].start()  # the channel outlives the uplinks that used it
            await wait_until(lambda: uplinks[2].cloud_reachable, "a new uplink's session on the same channel")
            await uplinks[2].stop()

    assert [h.sessions for h in heard] == [1, 1, 1]
    assert all(h.policies >= 1 for h in heard)  # the cloud pushes its policy on every session
    assert heard[0].acks == ["gw-0-a"]
    assert metrics.registry.get_sample_value("edgeglm_edge_samples_sent_total") == 3
    assert metrics.registry.get_sample_value("edgeglm_edge_uplink_reconnects_total") == 3


async def test_a_stream_the_cloud_ends_is_reopened_without_waiting_for_a_heartbeat_or_a_sample(
    tmp_path: Path, clip: Path
) -> None:
    # A cloud that knows another edge ends each of our streams right after the Hello.
    async with running(make_config(tmp_path, clip, known_edges=["gw-other"])) as service:
        # No heartbeat and no sample for an hour: only the stream's own end can make the uplink look again.
        config = GrpcUplinkConfig(target=f"127.0.0.1:{service.port}", heartbeat_interval_s=3600)
        heard, metrics = Heard("gw-stranger"), EdgeMetrics()
        uplink = GrpcUplink(config, heard.handlers(), metrics)
        await uplink.start()
        try:
            await wait_until(lambda: heard.sessions >= 3, "the refused stream reopened twice", timeout_s=30)
        finally:
            await uplink.stop()

    assert uplink.last_error.startswith("PERMISSION_DENIED: edge 'gw-stranger' is not in the cloud's known_edges")
    assert heard.verdicts == []


async def test_a_rotated_edge_certificate_is_used_at_the_next_reconnect(tmp_path: Path, clip: Path) -> None:
    """The edge's certificate is revoked and its files replaced by a new one: the uplink reopens its
    channel with the new files at its next reconnect, with no restart of the agent."""
    from common.tls import FleetCA

    ca = FleetCA(tmp_path / "ca").create()
    server = ca.issue_server(tmp_path / "ca", ["localhost"])
    mounted = tmp_path / "edge-secret"
    first = ca.issue_edge(tmp_path / "first", "gw-1")
    mounted.mkdir()
    (mounted / "tls.crt").write_bytes(first.cert_file.read_bytes())
    (mounted / "tls.key").write_bytes(first.key_file.read_bytes())
    ca.revoke("gw-1")
    tls = {
        "cert_file": server.cert_file,
        "key_file": server.key_file,
        "client_ca_file": ca.cert_file,
        "revoked_file": ca.revoked_file,
    }
    async with running(make_config(tmp_path, clip, server={"tls": tls})) as service:
        edge_tls = {"ca_file": ca.cert_file, "cert_file": mounted / "tls.crt", "key_file": mounted / "tls.key"}
        config = GrpcUplinkConfig.model_validate(
            {"target": f"localhost:{service.port}", "heartbeat_interval_s": 3600, "tls": edge_tls}
        )
        heard = Heard("gw-1")
        uplink = GrpcUplink(config, heard.handlers(), EdgeMetrics())
        await uplink.start()
        try:
            await wait_until(lambda: "is revoked" in uplink.last_error, "the revoked certificate refused")
            assert heard.policies == 0
            second = ca.issue_edge(tmp_path / "second", "gw-1")  # not revoked: a new serial
            (mounted / "tls.key").write_bytes(second.key_file.read_bytes())
            (mounted / "tls.crt").write_bytes(second.cert_file.read_bytes())
            await wait_until(lambda: heard.policies >= 1, "a session with the new certificate", timeout_s=30)
        finally:
            await uplink.stop()
    assert counter(service, "edgeglm_cloud_bad_messages_total", reason="revoked") >= 1


async def test_an_expired_edge_certificate_is_named_as_such_and_the_edge_keeps_trying(
    tmp_path: Path, clip: Path
) -> None:
    """TLS alone only says the connection failed; the uplink says its certificate expired, and when."""
    from common.tls import FleetCA

    ca = FleetCA(tmp_path / "ca").create()
    server = ca.issue_server(tmp_path / "ca", ["localhost"])
    expired = ca.issue_edge(tmp_path / "edge", "gw-1", days=0)  # not_after: now
    await wait_until(
        lambda: __import__("time").time() > expired.cert_file.stat().st_mtime + 1, "the certificate to age"
    )
    tls = {"cert_file": server.cert_file, "key_file": server.key_file, "client_ca_file": ca.cert_file}
    async with running(make_config(tmp_path, clip, server={"tls": tls})) as service:
        edge_tls = {"ca_file": ca.cert_file, "cert_file": expired.cert_file, "key_file": expired.key_file}
        config = GrpcUplinkConfig.model_validate({"target": f"localhost:{service.port}", "tls": edge_tls})
        heard = Heard("gw-1")
        uplink = GrpcUplink(config, heard.handlers(), EdgeMetrics())
        await uplink.start()
        try:
            # The call waits for a connection that TLS keeps failing (the edge decides locally meanwhile);
            # the uplink names why.
            await wait_until(lambda: "expired at" in uplink.last_error, "the expiry named")
            assert not uplink.cloud_reachable
        finally:
            await uplink.stop()
    assert "pki issue-edge" in uplink.last_error
    assert heard.policies == 0


async def test_an_aged_connection_is_closed_and_round_robin_spreads_the_new_streams_over_replicas(
    tmp_path: Path, clip: Path
) -> None:
    """Two replicas close each connection after a second (GOAWAY, a short grace); an edge given both
    addresses with round_robin reopens its Session on each in turn, so a replica added later gets edges."""
    aged = {"max_connection_age_s": 1.0, "max_connection_age_grace_s": 0.2}
    async with (
        running(make_config(tmp_path / "a", clip, server=aged)) as a,
        running(make_config(tmp_path / "b", clip, server=aged)) as b,
    ):
        config = GrpcUplinkConfig(
            target=f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}", load_balancing="round_robin", heartbeat_interval_s=0.5
        )
        heard, metrics = Heard("gw-roaming"), EdgeMetrics()
        seen: dict[str, int] = {"a": 0, "b": 0}

        def count_open() -> bool:
            for name, service in (("a", a), ("b", b)):
                seen[name] += counter(service, "edgeglm_cloud_sessions_open") > 0
            return heard.sessions >= 4 and min(seen.values()) >= 1

        uplink = GrpcUplink(config, heard.handlers(), metrics)
        await uplink.start()
        try:
            await wait_until(count_open, lambda: f"sessions on both replicas: {heard.sessions} opened, {seen}", 30)
        finally:
            await uplink.stop()
    assert heard.sessions >= 4, "each connection was closed at its age and a new stream opened"
    assert seen["a"] >= 1 and seen["b"] >= 1, "the streams went to both replicas"


def test_the_target_may_name_grpcs_own_resolvers_but_not_a_url() -> None:
    for target in (
        "dns:///edgeglm-cloud-headless.edgeglm.svc.cluster.local:50051",
        "ipv4:10.0.0.1:50051,10.0.0.2:50051",
    ):
        assert GrpcUplinkConfig(target=target).target == target
    with pytest.raises(ValidationError, match="has a scheme"):
        GrpcUplinkConfig(target="https://cloud.example:50051")
