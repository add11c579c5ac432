"""The drift scenario files load, and a drift scenario the loop could not run is refused with its YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.harness.drift import DriftLog, drift_hooks
from sim.scenarios.spec import SCENARIOS_DIR, ScenarioError, load_scenario

GOOD = """
name: d
duration_s: 300
edges:
  - name: dusk
    cameras: [{drift: {at_s: 60, to: infrared}}]
  - name: lit
retrain: {start_at_s: 120, give_up_at_s: 200}
modes: [edgeglm, edge_only]
"""


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "d.yaml"
    path.write_text(text)
    return load_scenario(path)


@pytest.mark.parametrize(("name", "candidate", "canaries"), [("drift", "trained", []), ("drift-bad", "bad", ["lit-0"])])
def test_the_drift_scenarios_ship_with_one_drifting_camera(name: str, candidate: str, canaries: list[str]) -> None:
    scenario = load_scenario(SCENARIOS_DIR / f"{name}.yaml")
    assert scenario.retrain is not None
    assert scenario.retrain.candidate == candidate
    assert scenario.retrain.rollout.canaries == canaries
    assert scenario.drifting_edges() == ["dusk-0"]
    assert all(group.transport == "grpc" for group in scenario.edges)
    drift = scenario.edges[0].cameras[0].drift
    assert drift is not None and drift.to == "infrared"
    assert drift.at_s < scenario.retrain.start_at_s < scenario.retrain.give_up_at_s < scenario.duration_s


def test_a_drift_scenario_gives_the_edgeglm_cloud_a_field_dataset_and_a_registry(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIOS_DIR / "drift.yaml")
    hooks = drift_hooks(scenario, tmp_path, DriftLog())
    assert hooks.cloud_sections["dataset"]["enabled"] is True
    assert hooks.cloud_sections["models"]["registry"] == str(tmp_path / "modes" / "edgeglm" / "cloud" / "registry")
    assert hooks.cloud_sections["models"]["rollout"]["soak_s"] == 30
    assert hooks.during is not None


def test_a_good_drift_scenario_loads(tmp_path: Path) -> None:
    assert _load(tmp_path, GOOD)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("    cameras: [{drift: {at_s: 60, to: infrared}}]\n", ""),
            "d.yaml: (top level): retrain: needs a camera with a drift",
        ),
        (("modes: [edgeglm, edge_only]", "modes: [edgeglm, sedna_ibt]"), "runs edgeglm (and edge_only to compare)"),
        (("modes: [edgeglm, edge_only]", "modes: [cloud_only]"), "runs edgeglm (and edge_only to compare)"),
        (("  - name: lit\n", "  - name: lit\n    transport: mqtt\n"), "edges fetch models over gRPC only"),
        (("give_up_at_s: 200", "give_up_at_s: 400"), "give_up_at_s 400.0 < duration_s 300.0 must hold"),
        (("give_up_at_s: 200}", "give_up_at_s: 200, rollout: {canaries: [gw-9]}}"), "no edge ['gw-9']"),
    ],
)
def test_a_drift_scenario_the_loop_could_not_run_is_refused(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ScenarioError, match=r"^d\.yaml: ") as caught:
        _load(tmp_path, GOOD.replace(*change))
    assert message in str(caught.value)


def test_a_drift_look_the_world_cannot_render_names_its_yaml_path(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as caught:
        _load(tmp_path, GOOD.replace("to: infrared", "to: fog"))
    assert str(caught.value).startswith("d.yaml: edges[0].cameras[0].drift.to: Input should be 'night' or 'infrared'")
