"""BandController with a real PolicyEngine and a real SQLite file, fed verdicts directly, on a fake clock.

Edge scores of true objects come from U(0.4, 1.0), of false ones from U(0.0, 0.6); for targets 0.95
the right band is [0.43, 0.578] (see test_policy_bands.py).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.convert import CloudDetection, SampleInput
from cloud.metrics import CloudMetrics
from cloud.policy import PolicyEngine, PolicySettings, PolicySigner
from cloud.policy.engine import PolicyChange, change_reason
from cloud.policy.loop import BandController, ClosedLoopConfig
from cloud.store.pairs import PairStore
from protos import sample_pb2, verdict_pb2
from protos.reasons import MinedReasonName
from tests.helpers.wait import wait_until

EDGE = "gw-1"
BOX = (100.0, 100.0, 200.0, 300.0)
RIGHT_LOW, RIGHT_HIGH = 0.43, 0.52 / 0.9
FLEET = PolicySettings.model_validate({"mining": {"random_audit_rate": 0.2}})


class Clock:
    """Unix time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def loop_config(**fields: Any) -> ClosedLoopConfig:
    defaults: dict[str, Any] = {
        "enabled": True,
        "min_pairs": 200,
        "min_audit_pairs": 10,
        "window_pairs": 5000,
        "evaluate_every_pairs": 1_000_000,  # evaluated by hand unless a test says otherwise
        "min_interval_s": 600,
        "audit_enabled": False,  # the band tests' audits are all right: the rule would halve their rate
    }
    return ClosedLoopConfig.model_validate(defaults | fields)


@asynccontextmanager
async def controller(
    tmp_path: Path, clock: Clock, config: ClosedLoopConfig | None = None
) -> AsyncIterator[tuple[BandController, PolicyEngine, CloudMetrics]]:
    """An engine (state in tmp_path) and a started controller on tmp_path's SQLite file, closed on exit."""
    metrics = CloudMetrics()
    engine = PolicyEngine(PolicySigner.ephemeral(), tmp_path / "policy-state.json", metrics, fleet=FLEET)
    config = config or loop_config()
    store = PairStore(tmp_path / "verdicts.sqlite", config.window_pairs, config.history_per_key)
    bands = BandController(config, engine, store, metrics.registry, clock=clock)
    await bands.start()
    try:
        yield bands, engine, metrics
    finally:
        await bands.close()


def sample_input(reason: MinedReasonName, detections: tuple[CloudDetection, ...], **fields: Any) -> SampleInput:
    fields.setdefault("camera_id", "cam0")
    return SampleInput(
        sample_id=f"s-{random.random()}",
        edge_id=EDGE,
        frame_seq=1,
        captured_at=0.0,
        image=np.zeros((8, 8, 3), dtype=np.uint8),
        crop=None,
        frame_size=(640, 480),
        detections=detections,
        mined_reason=reason,
        priority=0.5,
        trace_id="t",
        **fields,
    )


def observe(bands: BandController, score: float, truth: bool, reason: MinedReasonName, label: str = "person") -> None:
    """One verdict on a one-detection sample: the cloud finds the object exactly when it is true."""
    sample = sample_input(reason, (CloudDetection(label, 0, score, BOX),))
    found = [sample_pb2.Detection(label=label, score=0.9, box=sample_pb2.Box(x1=100, y1=100, x2=200, y2=300))]
    decision = verdict_pb2.DECISION_CONFIRMED if truth else verdict_pb2.DECISION_REJECTED
    bands.observe(sample, verdict_pb2.Verdict(decision=decision, detections=found if truth else []))


def edge_traffic(
    bands: BandController,
    rng: random.Random,
    count: int,
    band: tuple[float, float] = (0.25, 0.6),
    true_scores: tuple[float, float] = (0.4, 1.0),
) -> int:
    """`count` true and `count` false objects, mixed, as an edge with `band` and audit rate 0.2 sends them.

    Returns how many pairs were sent.
    """
    sent = 0
    truths = [True] * count + [False] * count
    rng.shuffle(truths)
    for truth in truths:
        score = rng.uniform(*true_scores) if truth else rng.uniform(0.0, 0.6)
        if band[0] <= score <= band[1]:
            observe(bands, score, truth, "uncertainty_band")
        elif rng.random() < 0.2:
            observe(bands, score, truth, "random_audit")
        else:
            continue
        sent += 1
    return sent


def band_of(engine: PolicyEngine, label: str = "person") -> tuple[float, float]:
    mining = engine.effective(EDGE)[0].mining
    band = mining.bands.get(label, mining.default_band)
    return band.low, band.high


async def test_a_band_moves_to_the_right_place_under_a_new_policy_version(tmp_path: Path) -> None:
    async with controller(tmp_path, Clock()) as (bands, engine, metrics):
        before = engine.version_for(EDGE)
        edge_traffic(bands, random.Random(1), 4000)
        version = await bands.evaluate(EDGE)
        assert version is not None and version > before
        assert engine.version_for(EDGE) == version
        low, high = band_of(engine)
        assert low == pytest.approx(RIGHT_LOW, abs=0.02)
        assert high == pytest.approx(RIGHT_HIGH, abs=0.02)
        assert band_of(engine, "car") == (0.25, 0.6)  # a class without pairs keeps the fleet band
        labels = {"edge_id": EDGE, "label": "person"}
        assert metrics.registry.get_sample_value("edgeglm_cloud_band_moves_total", labels) == 1
        assert metrics.registry.get_sample_value("edgeglm_cloud_band_low", labels) == low
        shown = bands.snapshot()["edges"][EDGE]["person"]
        assert shown["band"] == {"low": low, "high": high}
        assert shown["recall"] == pytest.approx(0.95, abs=0.01)
        assert [(h["low"], h["high"], h["version"]) for h in shown["history"]] == [(low, high, version)]
        assert "recall" in shown["history"][0]["reason"] and "upload" in shown["history"][0]["reason"]


async def test_nothing_moves_before_min_pairs_nor_within_min_interval(tmp_path: Path) -> None:
    clock = Clock()
    async with controller(tmp_path, clock, loop_config(min_pairs=1000)) as (bands, engine, _):
        rng = random.Random(2)
        sent = edge_traffic(bands, rng, 500)
        assert sent < 1000
        assert await bands.evaluate(EDGE) is None
        assert band_of(engine) == (0.25, 0.6)
        edge_traffic(bands, rng, 3000)
        first = await bands.evaluate(EDGE)
        assert first is not None
        moved = band_of(engine)
        # The edge's model changed: true objects now score 0.6 and up, low should follow them up,
        # but not within 600 s of the last move.
        edge_traffic(bands, rng, 6000, band=moved, true_scores=(0.6, 1.0))
        clock.now += 599
        assert await bands.evaluate(EDGE) is None
        assert band_of(engine) == moved
        clock.now += 2
        assert await bands.evaluate(EDGE) is not None
        assert band_of(engine)[0] > moved[0] + 0.1  # the window still holds pairs from before the change


async def test_every_n_pairs_the_task_evaluates_by_itself(tmp_path: Path) -> None:
    config = loop_config(evaluate_every_pairs=500, min_interval_s=0)
    async with controller(tmp_path, Clock(), config) as (bands, engine, _):
        before = engine.version_for(EDGE)
        edge_traffic(bands, random.Random(3), 4000)
        # The controller's task works in a thread: wait for its new policy.
        await wait_until(lambda: engine.version_for(EDGE) > before, "the controller's evaluation", 10, 0.05)
        assert engine.version_for(EDGE) > before
        assert band_of(engine) != (0.25, 0.6)


async def test_unsure_verdicts_and_audits_of_unknown_rate_give_no_pairs(tmp_path: Path) -> None:
    async with controller(tmp_path, Clock()) as (bands, engine, metrics):
        sample = SampleInput(
            sample_id="s-unsure",
            edge_id=EDGE,
            camera_id="cam0",
            frame_seq=1,
            captured_at=0.0,
            image=np.zeros((8, 8, 3), dtype=np.uint8),
            crop=None,
            frame_size=(640, 480),
            detections=(CloudDetection("person", 0, 0.5, BOX),),
            mined_reason="uncertainty_band",
            priority=0.5,
            trace_id="t",
        )
        bands.observe(sample, verdict_pb2.Verdict(decision=verdict_pb2.DECISION_UNSURE))
        await engine.set_edge(EDGE, {"mining": {"random_audit_enabled": False}})
        observe(bands, 0.9, True, "random_audit")
        assert bands.snapshot()["edges"] == {}
        dropped = "edgeglm_cloud_closed_loop_pairs_dropped_total"
        assert metrics.registry.get_sample_value(dropped, {"reason": "unsure"}) == 1
        assert metrics.registry.get_sample_value(dropped, {"reason": "no_audit_rate"}) == 1


async def test_the_window_and_the_bands_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    config = loop_config(window_pairs=1500, min_audit_pairs=5)
    async with controller(tmp_path, clock, config) as (bands, engine, _):
        edge_traffic(bands, random.Random(4), 3000)
        assert await bands.evaluate(EDGE) is not None
        moved, version = band_of(engine), engine.version_for(EDGE)
        window = bands.snapshot()["edges"][EDGE]["person"]
    assert window["pairs"] == 1500
    assert await PairStore(tmp_path / "verdicts.sqlite", 1500).count_pairs() == 1500  # bounded per key
    clock.now += 60
    async with controller(tmp_path, clock, config) as (bands, engine, _):
        assert band_of(engine) == moved  # published again: the engine itself keeps only cloud.yaml's settings
        assert engine.version_for(EDGE) > version
        again = bands.snapshot()["edges"][EDGE]["person"]
        assert (again["pairs"], again["audit_pairs"], again["confirmed_pairs"]) == (
            window["pairs"],
            window["audit_pairs"],
            window["confirmed_pairs"],
        )
        assert [h["version"] for h in again["history"]] == [h["version"] for h in window["history"]]
        assert await bands.evaluate(EDGE) is None  # min_interval_s counts from the move before the restart


async def test_pairs_older_than_the_window_age_leave_it(tmp_path: Path) -> None:
    clock = Clock()
    async with controller(tmp_path, clock, loop_config(window_age_s=3600)) as (bands, _, _):
        edge_traffic(bands, random.Random(5), 300)
        assert bands.snapshot()["edges"][EDGE]["person"]["pairs"] > 0
        clock.now += 3601
        assert bands.snapshot()["edges"][EDGE]["person"]["pairs"] == 0
        assert await bands.evaluate(EDGE) is None


def motion_rule(engine: PolicyEngine, camera: str = "cam0") -> float:
    """The motion threshold in force for one camera of the edge."""
    return engine.effective(EDGE)[0].mining.for_camera(camera).motion_min_area_fraction


def observe_motion(bands: BandController, area: float, object_there: bool) -> None:
    """One verdict on a motion-without-detection sample whose changed region covered `area` of the frame."""
    sample = sample_input("motion_without_detection", (), motion_area_fraction=area)
    found = [sample_pb2.Detection(label="cat", score=0.9, box=sample_pb2.Box(x1=1, y1=1, x2=50, y2=50))]
    decision = verdict_pb2.DECISION_CONFIRMED if object_there else verdict_pb2.DECISION_REJECTED
    bands.observe(sample, verdict_pb2.Verdict(decision=decision, detections=found if object_there else []))


async def test_the_loop_raises_the_motion_threshold_when_the_cloud_keeps_rejecting_motion_samples(
    tmp_path: Path,
) -> None:
    """Leaves and shadows (small changes) are rejected, the rare real object (a large change) confirmed:
    the threshold rises to let the confirmed ones through and stop most of the rest, as a signed version."""
    rng = random.Random(3)
    clock = Clock()
    config = loop_config(motion_min_samples=40, min_interval_s=60)
    async with controller(tmp_path, clock, config) as (bands, engine, _):
        assert motion_rule(engine) == 0.0
        for _ in range(45):
            observe_motion(bands, rng.uniform(0.0005, 0.004), object_there=False)
        confirmed = [rng.uniform(0.01, 0.03) for _ in range(5)]
        for area in confirmed:
            observe_motion(bands, area, object_there=True)
        version = await bands.evaluate(EDGE)
        assert version is not None
        raised = motion_rule(engine)
        assert 0.004 < raised <= min(confirmed), raised  # above every rejected change, none confirmed lost
        assert engine.effective(EDGE)[1] == version  # the edge's policy version is the one that moved it
        motion = bands.snapshot()["rules"][EDGE]["cam0"]["motion_min_area_fraction"]
        assert motion["value"] == pytest.approx(raised)
        assert engine.effective(EDGE)[0].mining.motion_min_area_fraction == 0.0, "another camera keeps its own"
        assert [m["version"] for m in motion["history"]] == [version]
        assert "rejected 45 of 50" in motion["history"][0]["reason"]
        assert EDGE not in bands.snapshot()["edges"], "the motion rule is not shown as a class band"
        # Too soon for another move, and the evidence restarts under the new threshold.
        assert await bands.evaluate(EDGE) is None
    # A restart keeps the threshold (the engine keeps only cloud.yaml's settings; the loop restores it).
    async with controller(tmp_path, clock, config) as (_, engine, _):
        assert motion_rule(engine) == pytest.approx(raised)


async def test_the_rules_evidence_survives_a_restart(tmp_path: Path) -> None:
    """The motion outcomes are kept with the pairs: a restart goes on from them, not from nothing."""
    clock = Clock()
    config = loop_config(motion_min_samples=200)
    async with controller(tmp_path, clock, config) as (bands, _, _):
        for area in (0.001, 0.002, 0.003):
            observe_motion(bands, area, object_there=False)
        observe_motion(bands, 0.02, object_there=True)
    async with controller(tmp_path, clock, config) as (bands, _, _):
        motion = bands.snapshot()["rules"][EDGE]["cam0"]["motion_min_area_fraction"]
    assert (motion["samples"], motion["hits"]) == (4, 3)


async def test_the_motion_threshold_holds_while_the_cloud_confirms_what_motion_sends(tmp_path: Path) -> None:
    rng = random.Random(4)
    async with controller(tmp_path, Clock(), loop_config(motion_min_samples=20)) as (bands, engine, _):
        for _ in range(30):
            observe_motion(bands, rng.uniform(0.0005, 0.01), object_there=rng.random() < 0.5)
        assert await bands.evaluate(EDGE) is None
        assert motion_rule(engine) == 0.0
        assert "holds" in bands.snapshot()["rules"][EDGE]["cam0"]["motion_min_area_fraction"]["last_evaluation"]["why"]


def observe_audit(bands: BandController, score: float, object_there: bool, camera: str = "cam0") -> None:
    """One verdict on an audited one-detection sample of `camera`."""
    sample = sample_input("random_audit", (CloudDetection("person", 0, score, BOX),), camera_id=camera)
    found = [sample_pb2.Detection(label="person", score=0.9, box=sample_pb2.Box(x1=100, y1=100, x2=200, y2=300))]
    decision = verdict_pb2.DECISION_CONFIRMED if object_there else verdict_pb2.DECISION_REJECTED
    bands.observe(sample, verdict_pb2.Verdict(decision=decision, detections=found if object_there else []))


def audit_rate(engine: PolicyEngine, camera: str = "cam0") -> float:
    return engine.effective(EDGE)[0].mining.for_camera(camera).random_audit_rate


def reasons_of(engine: PolicyEngine) -> dict[int, str]:
    """Policy version -> the reason its publisher gave, as the policy history records it."""
    seen: dict[int, str] = {}

    async def record(change: PolicyChange) -> None:
        seen[change.version] = change_reason()

    engine.subscribe(record)
    return seen


async def test_the_audit_rate_of_a_camera_rises_while_audits_contradict_its_local_decisions(tmp_path: Path) -> None:
    """cam0's sure detections (above the band) are often wrong, cam1's right: cam0 is audited more, as one
    signed version whose recorded reason holds the evidence; cam1 keeps the fleet's rate until its own
    evidence is clear at 95 %, then is audited less. The controller evaluates by itself as evidence comes."""
    clock = Clock()
    config = loop_config(audit_enabled=True, audit_min_samples=30, min_interval_s=60)
    fleet = PolicySettings.model_validate({"mining": {"random_audit_rate": 0.02}})
    async with controller(tmp_path, clock, config) as (bands, engine, _):
        await engine.set_fleet(fleet)
        reasons = reasons_of(engine)
        rng = random.Random(7)
        for _ in range(40):
            observe_audit(bands, rng.uniform(0.65, 0.95), object_there=rng.random() < 0.7, camera="cam0")
            observe_audit(bands, rng.uniform(0.65, 0.95), object_there=True, camera="cam1")
        await wait_until(lambda: audit_rate(engine, "cam0") == pytest.approx(0.04), "cam0 audited twice as often")
        assert audit_rate(engine, "cam1") == pytest.approx(0.02)  # 0 of 40 wrong is not yet clear at 95 %
        rule = bands.snapshot()["rules"][EDGE]["cam0"]["random_audit_rate"]
        version = engine.effective(EDGE)[1]
        assert [m["version"] for m in rule["history"]] == [version]
        assert "audited local decisions" in reasons[version] and "cam0 random_audit_rate" in reasons[version]
        assert "holds" in bands.snapshot()["rules"][EDGE]["cam1"]["random_audit_rate"]["last_evaluation"]["why"]
        # cam1's evidence becomes clear: its rate halves; cam0's doubles again while it stays wrong.
        clock.now += 61
        for _ in range(40):
            observe_audit(bands, rng.uniform(0.65, 0.95), object_there=True, camera="cam1")
        await wait_until(lambda: audit_rate(engine, "cam1") == pytest.approx(0.01), "cam1 audited half as often")
        assert audit_rate(engine, "cam0") == pytest.approx(0.08)
    async with controller(tmp_path, clock, config) as (_, engine, _):
        # A restart keeps the loop's values (the engine keeps cloud.yaml's settings; the loop restores them).
        assert (audit_rate(engine, "cam0"), audit_rate(engine, "cam1")) == pytest.approx((0.08, 0.01))


def observe_watch(bands: BandController, track: str, confirmed: bool, camera: str = "cam0") -> None:
    """One verdict on a watch-list sample asking about `track`."""
    sample = sample_input("watch_list", (CloudDetection("person", 0, 0.8, BOX),), camera_id=camera, track_id=track)
    found = [sample_pb2.Detection(label="person", score=0.9, box=sample_pb2.Box(x1=100, y1=100, x2=200, y2=300))]
    decision = verdict_pb2.DECISION_CONFIRMED if confirmed else verdict_pb2.DECISION_REJECTED
    bands.observe(sample, verdict_pb2.Verdict(decision=decision, detections=found if confirmed else []))


def reask_interval(engine: PolicyEngine, camera: str = "cam0") -> float:
    return engine.effective(EDGE)[0].mining.for_camera(camera).watch_reask_interval_s


async def test_watched_objects_are_re_checked_less_often_while_re_asks_keep_the_answer(tmp_path: Path) -> None:
    clock = Clock()
    config = loop_config(watch_min_samples=12, min_interval_s=60)
    fleet = PolicySettings.model_validate({"mining": {"watch_list": ["person"], "watch_reask_interval_s": 20.0}})
    async with controller(tmp_path, clock, config) as (bands, engine, _):
        await engine.set_fleet(fleet)
        for track in range(20):
            observe_watch(bands, f"t{track}", confirmed=True)  # first answers: no evidence yet
        assert await bands.evaluate(EDGE) is None
        assert bands.snapshot()["rules"] == {}
        for track in range(20):
            observe_watch(bands, f"t{track}", confirmed=True)  # re-asks: the same answer
        await wait_until(lambda: reask_interval(engine) == pytest.approx(40.0), "re-asks twice as far apart")
        why = bands.snapshot()["rules"][EDGE]["cam0"]["watch_reask_interval_s"]["history"][0]["reason"]
        assert "0 of 20 watched objects" in why
        # Then re-asks start changing the answer (another object took the tracks over): sooner again.
        clock.now += 61
        for track in range(20):
            observe_watch(bands, f"t{track}", confirmed=False)
        await wait_until(lambda: reask_interval(engine) == pytest.approx(20.0), "re-asks sooner again")
        assert reask_interval(engine, "cam1") == pytest.approx(20.0)  # another camera keeps the fleet's
