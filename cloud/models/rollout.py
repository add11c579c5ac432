"""A new edge model reaches the fleet by stages: canaries first, the rest once the canaries do no worse.

One rollout at a time. `begin` names the model and the canaries (named edges, or a share of the
connected ones) and gives each canary an override naming the model (`PolicyEngine.adjust_model`).
Every `check_every_s` the canaries' health is judged (`judge`, a pure rule):

- a canary that does not report the model in its Hello or heartbeat within `switch_timeout_s` (it
  refused the file, or cannot reach the cloud) fails the rollout;
- once the canaries' samples detected by the new model have `min_samples` cloud verdicts
  (confirmed or rejected), their rejection rate is compared with the baseline's: samples of the
  model(s) the canaries ran before, from every edge, over the last `BASELINE_WINDOW` verdicts. More
  than `max_rejection_increase` above it fails the rollout;
- a canary's own detector counters (from its heartbeats) compare the new model with the old one on
  the same camera: detections per frame changed by more than `max_detection_change` either way,
  detector time per frame up by more than `max_latency_increase`, a background task failure, or a
  restart after switching fail the rollout (after `min_frames` frames on each model);
- a failed rollout rolls the canaries back (their override drops the model: they follow the fleet
  again) and stops, with why, in the history;
- healthy after `soak_s` from the last canary's switch: the fleet policy names the model (every edge
  gets it) and the canaries' overrides are dropped;
- not enough verdicts within `max_wait_s`: paused for an operator.

An operator can pause (nothing moves; the canaries keep the model), resume, promote at once or roll
back at any stage, also after a promotion (the fleet policy names the model it named before).

The state is one JSON file (`rollout.json` in the registry folder) replaced whole on each change, so
a restarted cloud goes on where it was. With replicas, only the one that leads the closed loop runs
the checks (`leader`); the file is that replica's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud.convert import SampleInput
from cloud.models.config import RolloutConfig
from cloud.models.registry import ModelRegistry
from cloud.policy import PolicyEngine
from cloud.server import FleetStatus
from common.files import write_atomic
from common.periodic import PeriodicTask
from protos import status_pb2, verdict_pb2
from protos.policy_settings import ModelRef

logger = logging.getLogger(__name__)
STATE_FILE = "rollout.json"
BASELINE_WINDOW = 2000  # verdicts per model (name and version) kept for the baseline rate


def model_key(name: str, version: str) -> str:
    """One model among all the fleet runs: its name and version (two models may share a version string)."""
    return f"{name} {version}"


Stage = Literal["canary", "paused", "promoted", "rolled_back"]
ACTIVE: tuple[Stage, ...] = ("canary", "paused")


class RolloutError(ValueError):
    """A rollout that cannot start or an action the rollout's stage does not allow; the message says why."""


class Judged(BaseModel):
    """Cloud verdicts on samples: how many confirmed and rejected what the edge sent."""

    confirmed: int = 0
    rejected: int = 0

    @property
    def count(self) -> int:
        """Confirmed plus rejected (unsure verdicts say nothing of the model)."""
        return self.confirmed + self.rejected

    @property
    def rejection_rate(self) -> float | None:
        """Rejected over judged; None before any verdict."""
        return self.rejected / self.count if self.count else None


class EdgeCounts(BaseModel):
    """A canary's cumulative detector counters from one heartbeat (they restart with the agent)."""

    started_at: float = 0.0
    frames_detected: int = 0
    detections: int = 0
    detect_seconds: float = 0.0
    task_failures: int = 0

    @classmethod
    def of(cls, status: status_pb2.EdgeStatus | None) -> EdgeCounts | None:
        """The counts a heartbeat carries (None: no heartbeat yet)."""
        if status is None:
            return None
        c = status.counters
        return cls(
            started_at=status.started_at.ToNanoseconds() / 1e9,
            frames_detected=c.frames_detected,
            detections=c.detections,
            detect_seconds=c.detect_seconds,
            task_failures=c.task_failures,
        )


def device_health(edge: str, before: EdgeCounts, now: EdgeCounts, config: RolloutConfig) -> str | None:
    """Why a canary's own counters say the new model does worse than the old one did on it (None: they do not).

    `before` is its heartbeat when it first reported the new model (the old model's whole run since the
    agent started, with at most one heartbeat interval of the new one), `now` its latest.
    """
    if now.started_at != before.started_at:
        return f"{edge} restarted after switching (did the new model crash it?)"
    if now.task_failures > before.task_failures:
        return f"{edge}: {now.task_failures - before.task_failures} background task failures since it switched"
    frames = now.frames_detected - before.frames_detected
    if frames < config.min_frames or before.frames_detected < config.min_frames:
        return None
    rate_before = before.detections / before.frames_detected
    rate_now = (now.detections - before.detections) / frames
    floor = 1 / config.min_frames  # a model that saw nothing before: one detection per min_frames frames
    change = max(rate_now, floor) / max(rate_before, floor)
    if not 1 / config.max_detection_change <= change <= config.max_detection_change:
        return (
            f"{edge} detects {rate_now:.2f} objects per frame on the new model against {rate_before:.2f} on the old "
            f"({change:.2f}x, outside 1/{config.max_detection_change:g}-{config.max_detection_change:g}x)"
        )
    time_before = before.detect_seconds / before.frames_detected
    time_now = (now.detect_seconds - before.detect_seconds) / frames
    if time_now > config.max_latency_increase * time_before:
        return (
            f"{edge} takes {time_now * 1000:.1f} ms per frame on the new model against {time_before * 1000:.1f} ms "
            f"(more than {config.max_latency_increase:g}x)"
        )
    return None


class HistoryEntry(BaseModel):
    """One change of a rollout's stage, with who made it and why."""

    at: float
    stage: Stage
    why: str
    who: str = "rollout"


class Rollout(BaseModel):
    """One rollout as it is kept on disk and shown in the admin API."""

    model_config = ConfigDict(extra="forbid")

    model: ModelRef
    previous: ModelRef | None = Field(description="What the fleet policy named before (None: each edge's own).")
    canaries: list[str]
    baseline_versions: list[str] = Field(
        description="The models the canaries ran when it began, each as 'name version' (model_key); "
        "'' for an edge that had not said."
    )
    stage: Stage = "canary"
    started_at: float
    switched: dict[str, float] = Field(default_factory=dict, description="When each canary reported the model.")
    at_switch: dict[str, EdgeCounts] = Field(
        default_factory=dict, description="Each canary's detector counters when it first reported the model."
    )
    canary: Judged = Field(default_factory=Judged, description="Verdicts on the canaries' samples of the new model.")
    history: list[HistoryEntry] = Field(default_factory=list)

    @property
    def active(self) -> bool:
        """Whether it still moves (canary) or may (paused)."""
        return self.stage in ACTIVE


@dataclass(frozen=True, slots=True)
class Decision:
    """What `judge` says to do now: wait, promote, roll back or pause, and why."""

    action: Literal["wait", "promote", "rollback", "pause"]
    why: str


def judge(
    rollout: Rollout,
    baseline: Judged,
    config: RolloutConfig,
    now: float,
    counts: Mapping[str, EdgeCounts] | None = None,
) -> Decision:
    """The rule of a canary stage (module docstring), from what is known at `now`; `counts` are the
    canaries' latest detector counters."""
    for edge, latest in (counts or {}).items():
        before = rollout.at_switch.get(edge)
        trouble = device_health(edge, before, latest, config) if before is not None else None
        if trouble is not None:
            return Decision("rollback", trouble)
    late = [edge for edge in rollout.canaries if edge not in rollout.switched]
    if late and now - rollout.started_at > config.switch_timeout_s:
        return Decision(
            "rollback",
            f"{', '.join(late)} did not report {rollout.model.version} within {config.switch_timeout_s:g} s "
            "(refused the file, or offline: see edgeglm_edge_model_updates on it)",
        )
    canary = rollout.canary
    enough = canary.count >= config.min_samples and baseline.count >= config.min_samples
    if enough:
        assert canary.rejection_rate is not None and baseline.rejection_rate is not None
        increase = canary.rejection_rate - baseline.rejection_rate
        rates = (
            f"the cloud rejects {canary.rejection_rate:.0%} of the canaries' samples on {rollout.model.version} "
            f"({canary.rejected}/{canary.count}) against {baseline.rejection_rate:.0%} on "
            f"{'/'.join(rollout.baseline_versions) or 'the configured model'} ({baseline.rejected}/{baseline.count})"
        )
        if increase > config.max_rejection_increase:
            return Decision("rollback", f"{rates}: more than {config.max_rejection_increase:.0%} worse")
        if not late and now - max(rollout.switched.values(), default=now) >= config.soak_s:
            return Decision("promote", f"{rates}, after a {config.soak_s:g} s soak")
        return Decision("wait", rates)
    if now - rollout.started_at > config.max_wait_s:
        return Decision(
            "pause",
            f"only {canary.count} canary and {baseline.count} baseline verdicts after {config.max_wait_s:g} s "
            f"(min_samples {config.min_samples}): an operator decides",
        )
    return Decision("wait", f"{canary.count} canary and {baseline.count} baseline verdicts so far")


def fleet_model(registry: ModelRegistry) -> ModelRef | None:
    """What the fleet policy names according to the registry's saved rollout (None: no rollout reached the
    fleet, so every edge runs its configured model): the model of a promoted rollout, else what the fleet
    ran before the latest one began. For tools that work on the registry without the service (train-edge)."""
    path = registry.root / STATE_FILE
    if not path.is_file():
        return None
    try:
        rollout = Rollout.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as err:
        raise RolloutError(f"{path}: cannot read the saved rollout: {err}") from err
    return rollout.model if rollout.stage == "promoted" else rollout.previous


def pick_canaries(edges: Iterable[str], fraction: float, salt: str) -> list[str]:
    """A stable share of `edges` (at least one): ordered by a hash of `salt` and the edge id, so one rollout
    always picks the same edges and different rollouts spread over the fleet."""
    ordered = sorted(edges, key=lambda edge: hashlib.sha256(f"{salt}/{edge}".encode()).digest())
    if not ordered:
        return []
    return sorted(ordered[: max(1, math.ceil(fraction * len(ordered)))])


def _by(who: str) -> str:
    """The metric label of who ended a rollout: the rule, or an operator (any user name)."""
    return "rollout" if who == "rollout" else "operator"


class RolloutMetrics:
    """The rollout's Prometheus series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register on `registry`."""
        self.stage = Gauge(
            "edgeglm_cloud_rollout_stage",
            "1 for the stage the latest rollout is in (canary, paused, promoted, rolled_back), by model version.",
            ["version", "stage"],
            registry=registry,
        )
        self.rejection_rate = Gauge(
            "edgeglm_cloud_rollout_rejection_rate",
            "Cloud rejection rate of the latest rollout's samples: the canaries' on the new model, and the baseline.",
            ["group"],
            registry=registry,
        )
        self.outcomes = Counter(
            "edgeglm_cloud_rollouts",
            "Rollouts ended, by outcome (promoted, rolled_back) and by whom (rollout: the rule, or operator).",
            ["outcome", "by"],
            registry=registry,
        )
        self.errors = Counter(
            "edgeglm_cloud_rollout_errors",
            "Rollout checks that failed (logged); the next one goes on.",
            registry=registry,
        )


class RolloutController:
    """Runs the rollout of the registry's models over the fleet (module docstring)."""

    def __init__(
        self,
        config: RolloutConfig,
        engine: PolicyEngine,
        registry: ModelRegistry,
        fleet: FleetStatus,
        metrics: CollectorRegistry,
        *,
        state_path: Path | None = None,
        leader: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Nothing runs until `start`; `leader` says whether this replica runs the checks (None: it does)."""
        self._config = config
        self._engine = engine
        self._registry = registry
        self._fleet = fleet
        self._metrics = RolloutMetrics(metrics)
        self._path = state_path or registry.root / STATE_FILE
        self._leader = leader
        self._clock = clock
        self._recent: dict[str, deque[bool]] = {}
        self.rollout: Rollout | None = None
        self._saved = b""  # the state file's bytes as last written or read
        self._task = PeriodicTask(
            "rollout", self.check, config.check_every_s, failures=self._metrics.errors, log=logger
        )

    async def start(self) -> None:
        """Read the saved rollout and start the periodic check."""
        if self._path.is_file():
            try:
                self._saved = self._path.read_bytes()
                self.rollout = Rollout.model_validate_json(self._saved)
            except (OSError, ValidationError) as err:
                logger.error("%s: cannot read the saved rollout (%s); starting with none", self._path, err)
        self._show()
        self._task.start()

    async def close(self) -> None:
        """Stop the periodic check."""
        await self._task.stop()

    def observe(self, sample: SampleInput, verdict: verdict_pb2.Verdict) -> None:
        """Count one cloud verdict for the model version that detected the sample (ingest observer; no I/O)."""
        if verdict.decision == verdict_pb2.DECISION_CONFIRMED:
            rejected = False
        elif verdict.decision == verdict_pb2.DECISION_REJECTED:
            rejected = True
        else:
            return
        key = model_key(sample.edge_model_name, sample.edge_model_version)
        window = self._recent.get(key)
        if window is None:
            window = self._recent[key] = deque(maxlen=BASELINE_WINDOW)
        window.append(rejected)
        rollout = self.rollout
        if (
            rollout is not None
            and rollout.stage in ACTIVE
            and sample.edge_id in rollout.switched
            and key == model_key(rollout.model.name, rollout.model.version)
        ):
            if rejected:
                rollout.canary.rejected += 1
            else:
                rollout.canary.confirmed += 1

    def baseline(self) -> Judged:
        """Verdicts over the last window of the versions the canaries ran before."""
        versions = self.rollout.baseline_versions if self.rollout is not None else []
        rejected = sum(sum(self._recent.get(version, ())) for version in versions)
        count = sum(len(self._recent.get(version, ())) for version in versions)
        return Judged(confirmed=count - rejected, rejected=rejected)

    async def begin(
        self,
        name: str,
        version: str,
        *,
        canaries: list[str] | None = None,
        fraction: float | None = None,
        who: str = "operator",
    ) -> Rollout:
        """Start rolling out the published `name` `version` to `canaries` (or `fraction` of the connected edges;
        default the configured share)."""
        if self.rollout is not None and self.rollout.active:
            raise RolloutError(
                f"the rollout of {self.rollout.model.name} {self.rollout.model.version} is {self.rollout.stage}; "
                "promote or roll it back first"
            )
        published = self._registry.get(name, version)
        connected = [record.edge_id for record in self._fleet.records() if record.sessions > 0]
        share = fraction or self._config.canary_fraction
        chosen = sorted(set(canaries)) if canaries else pick_canaries(connected, share, version)
        if not chosen:
            raise RolloutError("no edge is connected to be a canary; name the canaries")
        previous = self._engine.fleet.model
        baseline = sorted({self._model_of(edge) for edge in chosen})
        now = self._clock()
        self.rollout = Rollout(
            model=published.ref(),
            previous=previous,
            canaries=chosen,
            baseline_versions=baseline,
            started_at=now,
        )
        self._record("canary", f"canaries {', '.join(chosen)} get {name} {version}", who)
        for edge in chosen:
            await self._engine.adjust_model(edge, self.rollout.model, f"rollout of {name} {version}: canary")
        self._save()
        return self.rollout

    async def check(self) -> Decision | None:
        """Judge the canary stage once and act on it (None: nothing to judge, or another replica leads)."""
        rollout = self.rollout
        if rollout is None or rollout.stage != "canary" or (self._leader is not None and not self._leader()):
            return None
        now = self._clock()
        counts: dict[str, EdgeCounts] = {}
        for edge in rollout.canaries:
            record = self._fleet.get(edge)
            latest = EdgeCounts.of(record.status if record is not None else None)
            if edge not in rollout.switched and self._model_of(edge) == model_key(
                rollout.model.name, rollout.model.version
            ):
                rollout.switched[edge] = now
                if latest is not None:
                    rollout.at_switch[edge] = latest
                logger.info("rollout of %s: canary %s runs it", rollout.model.version, edge)
            elif edge in rollout.switched and latest is not None:
                counts[edge] = latest
        baseline = self.baseline()
        self._metrics.rejection_rate.labels("canary").set(rollout.canary.rejection_rate or 0.0)
        self._metrics.rejection_rate.labels("baseline").set(baseline.rejection_rate or 0.0)
        decision = judge(rollout, baseline, self._config, now, counts)
        if decision.action == "rollback":
            await self._roll_back(decision.why, "rollout")
        elif decision.action == "promote":
            await self._promote(decision.why, "rollout")
        elif decision.action == "pause":
            self._record("paused", decision.why, "rollout")
        self._save()
        return decision

    async def pause(self, why: str, who: str) -> Rollout:
        """Hold the canary stage: nothing moves until `resume`."""
        rollout = self._require("canary")
        self._record("paused", why or "paused", who)
        self._save()
        return rollout

    async def resume(self, why: str, who: str) -> Rollout:
        """Judge the canaries again (the waiting time starts over)."""
        rollout = self._require("paused")
        rollout.started_at = self._clock()
        self._record("canary", why or "resumed", who)
        self._save()
        return rollout

    async def promote(self, why: str, who: str) -> Rollout:
        """Give every edge the model now."""
        self._require(*ACTIVE)
        await self._promote(why or "promoted by an operator", who)
        self._save()
        return self._require("promoted")

    async def roll_back(self, why: str, who: str) -> Rollout:
        """Undo: the canaries (or, after a promotion, the fleet) go back to what ran before."""
        rollout = self._require(*ACTIVE, "promoted")
        if rollout.stage == "promoted":
            await self._engine.set_fleet_model(rollout.previous, f"rollback of {rollout.model.version}: {why}")
            self._record("rolled_back", why or "rolled back by an operator", who)
            self._metrics.outcomes.labels("rolled_back", _by(who)).inc()
        else:
            await self._roll_back(why or "rolled back by an operator", who)
        self._save()
        return rollout

    def snapshot(self) -> dict[str, Any]:
        """The latest rollout, its baseline and the rule's settings, as JSON."""
        rollout = self.rollout
        if rollout is None:
            return {"enabled": True, "rollout": None, "config": self._config.model_dump()}
        baseline = self.baseline()
        return {
            "enabled": True,
            "rollout": rollout.model_dump(mode="json"),
            "canary_rejection_rate": rollout.canary.rejection_rate,
            "baseline": baseline.model_dump(),
            "baseline_rejection_rate": baseline.rejection_rate,
            "config": self._config.model_dump(),
        }

    async def _promote(self, why: str, who: str) -> None:
        rollout = self._require(*ACTIVE)
        reason = f"rollout of {rollout.model.version}: promoted ({why})"
        await self._engine.set_fleet_model(rollout.model, reason)
        for edge in rollout.canaries:
            await self._engine.adjust_model(edge, None, reason)
        self._record("promoted", why, who)
        self._metrics.outcomes.labels("promoted", _by(who)).inc()

    async def _roll_back(self, why: str, who: str) -> None:
        rollout = self._require(*ACTIVE)
        reason = f"rollout of {rollout.model.version}: rolled back ({why})"
        for edge in rollout.canaries:
            await self._engine.adjust_model(edge, None, reason)
        self._record("rolled_back", why, who)
        self._metrics.outcomes.labels("rolled_back", _by(who)).inc()
        logger.warning("rollout of %s %s rolled back: %s", rollout.model.name, rollout.model.version, why)

    def _model_of(self, edge_id: str) -> str:
        """The model an edge says it runs, as `model_key` ('' before it said)."""
        record = self._fleet.get(edge_id)
        return model_key(*record.model) if record is not None and any(record.model) else ""

    def _require(self, *stages: Stage) -> Rollout:
        rollout = self.rollout
        if rollout is None:
            raise RolloutError("no rollout has begun")
        if rollout.stage not in stages:
            raise RolloutError(
                f"the rollout of {rollout.model.version} is {rollout.stage}; this needs it {' or '.join(stages)}"
            )
        return rollout

    def _record(self, stage: Stage, why: str, who: str) -> None:
        rollout = self.rollout
        assert rollout is not None
        rollout.stage = stage
        rollout.history.append(HistoryEntry(at=self._clock(), stage=stage, why=why, who=who))
        logger.info("rollout of %s %s: %s (%s, by %s)", rollout.model.name, rollout.model.version, stage, why, who)
        self._show()

    def _show(self) -> None:
        rollout = self.rollout
        if rollout is None:
            return
        for stage in ("canary", "paused", "promoted", "rolled_back"):
            self._metrics.stage.labels(rollout.model.version, stage).set(1 if stage == rollout.stage else 0)

    def _save(self) -> None:
        """Write the rollout when it changed since the last write (a check every few seconds mostly changes
        nothing)."""
        if self.rollout is None:
            return
        data = self.rollout.model_dump_json(indent=2).encode()
        if data != self._saved:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self._path, data)
            self._saved = data
