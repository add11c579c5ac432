"""Scenario files load (or fail with their YAML path), and each mode's policy makes the real miner behave as named."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cloud.policy.settings import parse_settings
from common.detect import Detection
from edge.mine import Miner, MiningContext
from edge.policy.settings import EdgePolicy, GatePolicy, MiningPolicy
from sim.scenarios.modes import closed_loop, mode_policy
from sim.scenarios.spec import ALL_MODES, SCENARIOS_DIR, Scenario, ScenarioError, load_scenario

SHIPPED = sorted(SCENARIOS_DIR.glob("*.yaml"))


def test_the_issue_scenarios_ship() -> None:
    assert {p.stem for p in SHIPPED} >= {"demo", "retail-4g", "campus", "outage", "fleet-1000"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_scenario_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    if scenario.light_fleet is None:
        assert scenario.edge_ids()
        assert scenario.cloud.onnx_model.exists()


def test_a_bad_scenario_names_the_yaml_path_of_each_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nedges:\n  - name: a\n    link: {loss: 0.9}\n  - name: b\n    transport: carrier-pigeon\n"
        "modes: [cloud_only, telepathy]\n"
    )
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).splitlines() == [
        "bad.yaml: edges[0].link.loss: 0.9 is above the maximum 0.5",
        "bad.yaml: edges[1].transport: Input should be 'grpc' or 'mqtt' (got 'carrier-pigeon')",
        "bad.yaml: modes[1]: Input should be 'cloud_only', 'edge_only', 'sedna_ibt', 'random' or 'edgeglm' "
        "(got 'telepathy')",
    ]


def test_cloud_outages_are_added_to_every_link() -> None:
    scenario = load_scenario(SCENARIOS_DIR / "demo.yaml")
    for _, group in scenario.edge_ids():
        windows = [(w.start_s, w.duration_s) for w in scenario.link_for(group).outages]
        assert (18.0, 12.0) in windows


def _scenario() -> Scenario:
    return load_scenario(SCENARIOS_DIR / "demo.yaml")


@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_mode_policy_is_a_valid_signed_policy(mode: str) -> None:
    raw = mode_policy(mode, _scenario())  # type: ignore[arg-type]
    settings = parse_settings(raw, f"mode {mode}")
    assert settings.uplink.jpeg_quality == 80
    # The same settings are the edge's initial policy, in force before the cloud has spoken.
    assert EdgePolicy(**raw).mining.model_dump() == settings.mining.model_dump()


def _miner(mode: str) -> tuple[Miner, GatePolicy]:
    raw = mode_policy(mode, _scenario())  # type: ignore[arg-type]
    return Miner(MiningPolicy(**raw["mining"]), rng=random.Random(0)), GatePolicy(**raw.get("gate", {}))


def _box(score: float, label: str = "person") -> Detection:
    return Detection(box=(10.0, 10.0, 50.0, 90.0), score=score, class_id=0, label=label)


FRAMES = [
    (True, []),
    (True, [_box(0.95)]),
    (True, [_box(0.3)]),
    (True, [_box(0.3), _box(0.35, "cat")]),
    (True, [_box(0.9, "cat")]),
]


def _mined(mode: str, rounds: int = 200) -> list[int]:
    miner, _ = _miner(mode)
    counts = [0] * len(FRAMES)
    for index in range(rounds):
        for number, (motion, detections) in enumerate(FRAMES):
            # A camera per frame kind, rounds an hour apart: the miner's resend interval holds none back.
            context = MiningContext(f"cam{number}", index, motion, detections, captured_at=index * 3600.0)
            decision = miner.decide(context)
            counts[number] += decision.kind == "suspicious"
    return counts


def test_cloud_only_sends_every_frame_and_trusts_nothing_locally() -> None:
    assert _mined("cloud_only") == [200] * len(FRAMES)
    miner, gate = _miner("cloud_only")
    assert gate.changed_area_fraction == 0.0  # the gate passes every frame
    assert miner.decide(MiningContext("cam0", 0, True, [_box(0.99)])).confident == ()


def test_edge_only_never_sends_and_acts_on_sure_detections() -> None:
    assert _mined("edge_only") == [0] * len(FRAMES)
    miner, _ = _miner("edge_only")
    assert len(miner.decide(MiningContext("cam0", 0, True, [_box(0.95)])).confident) == 1


def test_sedna_ibt_sends_frames_whose_boxes_are_mostly_unsure() -> None:
    counts = _mined("sedna_ibt")
    assert counts[0] == 0 and counts[1] == 0 and counts[4] == 0  # nothing, or only sure boxes
    assert counts[2] == 200 and counts[3] == 200  # every box at or below Sedna's 0.5


def test_random_sends_about_its_fraction_of_detected_frames() -> None:
    counts = _mined("random", rounds=1000)
    assert counts[0] == 0  # no detection, never
    fraction = sum(counts[1:]) / (4 * 1000)
    assert abs(fraction - 0.05) < 0.02


def test_edgeglm_mines_the_band_the_watch_list_and_motion() -> None:
    counts = _mined("edgeglm")
    assert counts[0] == 200  # motion without detection
    assert counts[1] == 200  # a watch-listed person, even a sure one
    assert counts[2] == 200
    assert 10 < counts[4] < 50  # a sure cat: only the audit's share (15 % in the demo)


def test_only_edgeglm_runs_the_closed_loop() -> None:
    scenario = _scenario()
    assert closed_loop("edgeglm", scenario) == dict(scenario.cloud.closed_loop)
    assert all(closed_loop(mode, scenario) is None for mode in ALL_MODES if mode != "edgeglm")


def test_fleet_1000_describes_a_thousand_light_edges() -> None:
    from sim.fleet.light_config import Fleet1000Config

    scenario = load_scenario(SCENARIOS_DIR / "fleet-1000.yaml")
    assert scenario.light_fleet is not None
    config = Fleet1000Config(**scenario.light_fleet.settings)
    assert config.fleet.edges == 1000
