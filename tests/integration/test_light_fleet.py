"""A lightweight fleet against a real in-process cloud: 50 simulated edges, each its own Session stream
over shared gRPC channels, the oracle backend judging real JPEG crops from generated clips.

Every edge reuses the camera ids cam0 and cam1 while its cameras show different clips, so the
oracle must look ground truth up by edge and camera to judge right.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from cloud.backends import OracleBackendConfig
from edge.config import GrpcUplinkConfig
from sim.fleet.light import RESULT_FILE, run_light_fleet
from sim.fleet.light_cloud import run_fleet_1000
from sim.fleet.light_config import Fleet1000Config, LightCloudConfig, LightFleetConfig
from sim.fleet.light_samples import camera_clips, ensure_clips
from sim.fleet.run import free_port
from tests.helpers.cloud import counter, make_config, running
from tests.helpers.wait import wait_until

FLEET = LightFleetConfig(
    edges=50,
    cameras_per_edge=2,
    samples_per_edge=4,
    rate_per_edge_hz=20.0,
    edges_per_channel=10,
    generated_clips=3,
    clip_seconds=6.0,
    frames_per_clip=16,
    start_ramp_s=1.0,
    deadline_s=90.0,
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return ensure_clips(FLEET, tmp_path_factory.mktemp("light"))


async def test_fifty_light_edges_get_every_verdict_once_and_right(tmp_path: Path, clips: list[Path]) -> None:
    truth = {key: str(path) for key, path in camera_clips(FLEET, clips).items()}
    config = make_config(
        tmp_path,
        clips[0],
        backend={"ground_truth": truth, "max_batch_size": 64},
        batcher={"max_batch_size": 64, "max_queue_size": 5_000},
        admin={"enabled": True, "host": "127.0.0.1", "port": 0},
    )
    assert isinstance(config.backend, OracleBackendConfig)
    assert "cam0" in config.backend.ground_truth  # make_config's camera-only key stays, as a fallback
    async with running(config) as service:
        result = await run_light_fleet(
            FLEET,
            f"127.0.0.1:{service.port}",
            tmp_path / "out",
            progress=False,
            metrics_url=f"http://127.0.0.1:{service.admin_port}/metrics",
            clips=clips,
        )
        received = counter(service, "edgeglm_cloud_samples_received_total", transport="grpc")

    planned = FLEET.edges * FLEET.samples_each
    assert result.samples_planned == planned
    assert (result.samples_sent, result.samples_unsent, result.verdicts_received) == (planned, 0, planned)
    assert (result.samples_lost, result.samples_duplicated, result.samples_refused) == (0, 0, 0)
    assert (result.verdicts_correct, result.verdicts_wrong) == (planned, 0), result.wrong_examples
    assert result.decisions["confirmed"] > 0
    assert result.decisions["rejected"] > 0
    assert result.origins == {"backend": planned}
    assert result.sessions_opened == FLEET.edges
    assert received == result.sends == planned
    assert result.cloud["samples_received"] == planned
    assert result.cloud["verdicts_sent"] == planned
    assert result.ingest_rate_verdicts_per_s is not None
    assert result.ingest_rate_verdicts_per_s > 0
    assert result.verdict_latency_ms["p99"] is not None
    assert not result.deadline_reached
    written = json.loads((tmp_path / "out" / RESULT_FILE).read_text())
    assert written["samples_lost"] == 0
    assert written["verdicts_received"] == planned


def test_the_fleet_runner_starts_a_cloud_process_and_reads_its_ingest_counters(tmp_path: Path) -> None:
    fleet = FLEET.model_copy(update={"edges": 20, "samples_per_edge": 3, "edges_per_channel": 8, "generated_clips": 2})
    config = Fleet1000Config(fleet=fleet, cloud=LightCloudConfig(oracle_delay_ms=5, oracle_jitter_ms=0))

    summary = run_fleet_1000(config, tmp_path, Console(file=io.StringIO()))

    assert (summary["samples_sent"], summary["verdicts_received"], summary["verdicts_correct"]) == (60, 60, 60)
    assert (summary["samples_lost"], summary["samples_duplicated"]) == (0, 0)
    assert summary["cloud"]["samples_received"] == 60
    assert summary["cloud"]["ingest_rate_per_s"] > 0
    cloud_yaml = yaml.safe_load((tmp_path / "config" / "cloud.yaml").read_text())
    assert len(cloud_yaml["backend"]["ground_truth"]) == 20 * FLEET.cameras_per_edge
    assert cloud_yaml["known_edges"] == []
    assert "cloud service stopped" in (tmp_path / "logs" / "cloud.log").read_text()  # stopped in order, not killed


async def test_light_edges_resend_across_a_cloud_restart_and_nothing_is_lost_or_doubled(
    tmp_path: Path, clips: list[Path]
) -> None:
    # The agents' own reconnect backoff, shortened so the channels find the second cloud soon after it starts.
    uplink = GrpcUplinkConfig(reconnect_backoff_initial_ms=100, reconnect_backoff_max_ms=1_000)
    fleet = FLEET.model_copy(
        update={"edges": 30, "samples_per_edge": 8, "rate_per_edge_hz": 2.0, "edges_per_channel": 6, "uplink": uplink}
    )
    truth = {key: str(path) for key, path in camera_clips(fleet, clips).items()}
    config = make_config(
        tmp_path,
        clips[0],
        # The restarted cloud listens where the first one did. While the first one stops it delivers the
        # verdicts it owes (a slow backend: that takes a while) and reads no more of a stream, and the edges,
        # told to reconnect, come back to it until its grace is out; what it never judged they must resend
        # to the second one.
        server={"port": free_port(), "shutdown_grace_s": 1},
        backend={"ground_truth": truth, "delay_ms": 300, "max_batch_size": 64},
        batcher={"max_batch_size": 64, "max_queue_size": 5_000},
    )
    planned = fleet.edges * fleet.samples_each
    fleet_run = asyncio.create_task(
        run_light_fleet(fleet, f"127.0.0.1:{config.server.port}", tmp_path / "out", progress=False, clips=clips)
    )
    async with running(config) as first:
        await wait_until(
            lambda: counter(first, "edgeglm_cloud_samples_received_total", transport="grpc") >= planned / 3,
            "a third of the samples received",
        )
        judged_by_first = await first.store.count()
    assert 0 < judged_by_first < planned
    async with running(config) as second:
        result = await asyncio.wait_for(fleet_run, fleet.deadline_s + 30)
        stored = await second.store.count()
        received_by_second = counter(second, "edgeglm_cloud_samples_received_total", transport="grpc")

    assert (result.samples_sent, result.samples_unsent, result.verdicts_received) == (planned, 0, planned)
    assert (result.samples_lost, result.samples_duplicated) == (0, 0)
    assert (result.verdicts_correct, result.verdicts_wrong) == (planned, 0), result.wrong_examples
    assert result.sessions_opened > fleet.edges  # every edge came back on a new stream
    assert result.samples_resent["unanswered"] > 0  # the dispatcher's resends when the cloud came back
    assert result.sends > planned
    assert received_by_second > 0
    assert stored == planned  # one verdict per sample over both clouds (same store): no second judgement
