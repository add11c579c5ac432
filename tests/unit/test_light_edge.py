"""The lightweight fleet's own logic: its prepared crops are judged by the oracle as the edge expects,
and its settings. (The edge's delivery over a real Session is in tests/integration/test_light_edge.py.)"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from cloud.backends import OracleBackend, OracleBackendConfig
from cloud.convert import sample_from_pb
from sim.fleet.light_config import LightFleetConfig
from sim.fleet.light_samples import build_sample, prepare_clip
from sim.world.clips import ClipSpec, write_clip


def config(**overrides: Any) -> LightFleetConfig:
    settings: dict[str, Any] = {"edges": 1, "cameras_per_edge": 2, "samples_per_edge": 6}
    return LightFleetConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ClipSpec(seed=0, seconds=8, fps=5, quiet_start_seconds=1.0, mean_gap_seconds=1.0)  # 26 busy, 14 empty
    return write_clip(spec, tmp_path_factory.mktemp("light-clip"))


async def test_prepared_crops_are_judged_by_the_oracle_as_the_edge_expects(clip: Path) -> None:
    settings = config(frames_per_clip=30, empty_share=0.3, crop_size=96)
    crops = prepare_clip(clip, settings, random.Random(0))
    oracle = OracleBackend(OracleBackendConfig(ground_truth={"light-00001/cam1": clip}, delay_ms=0, jitter_ms=0))
    await oracle.start()
    rng = random.Random(1)
    samples = [
        sample_from_pb(build_sample(crop, f"s{i}", "light-00001", "cam1", settings.box_noise_px, rng))
        for i, crop in enumerate(crops)
    ]

    results = await oracle.infer(samples)

    assert len(crops) == 30
    assert {c.expected for c in crops} == {"confirmed", "rejected"}
    assert [r.decision for r in results] == [c.expected for c in crops]
    for crop, sample in zip(crops, samples, strict=True):
        x1, y1, x2, y2 = crop.crop
        assert sample.image.shape[:2] == (y2 - y1, x2 - x1)  # the JPEG is the crop, not the frame
        assert x2 - x1 >= 96 and y2 - y1 >= 96


def test_fleet_length_is_a_sample_count_or_a_duration_at_a_rate_not_both() -> None:
    assert LightFleetConfig(duration_s=30, rate_per_edge_hz=0.5).samples_each == 15
    assert LightFleetConfig(samples_per_edge=7).samples_each == 7
    with pytest.raises(ValueError, match="not both"):
        LightFleetConfig(samples_per_edge=7, duration_s=30)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        LightFleetConfig.model_validate({"edge_count": 5})


def test_the_fleet_takes_the_agents_uplink_and_outbox_settings_but_not_their_target_or_path() -> None:
    settings = LightFleetConfig.model_validate(
        {"uplink": {"reconnect_backoff_initial_ms": 100}, "outbox": {"window": 4, "verdict_timeout_s": 5}}
    )
    uplink = settings.uplink_to("cloud.example:50051")
    assert (uplink.target, uplink.reconnect_backoff_initial_ms, uplink.kind) == ("cloud.example:50051", 100, "grpc")
    assert (settings.outbox.window, settings.outbox.verdict_timeout_s) == (4, 5)
    with pytest.raises(ValueError, match=r"uplink\.target is the cloud the run is pointed at"):
        LightFleetConfig.model_validate({"uplink": {"target": "elsewhere:50051"}})
    with pytest.raises(ValueError, match=r"outbox\.path does not apply"):
        LightFleetConfig.model_validate({"outbox": {"path": "/tmp/outbox.sqlite"}})
    with pytest.raises(ValueError, match="is not host:port"):
        settings.uplink_to("nowhere")
    # The light edge's own reconnect loop is gone: the agent's uplink reconnects by itself.
    for retired in ("reconnect_backoff_s", "max_sessions_per_edge", "verdict_wait_s"):
        with pytest.raises(ValueError, match="Extra inputs are not permitted"):
            LightFleetConfig.model_validate({retired: 1})
