"""The closed loop: per edge and class, (edge score, cloud decision) pairs move the uncertainty band.

`PolicyEngine.observe` hands every backend verdict to `BandController.observe` on the event loop.
It turns each detection the edge reported into a pair (its score; whether the cloud confirmed that
object; unsure verdicts are ignored), weighted for the sampling bias (`cloud.policy.bands`), and
appends it to the (edge_id, label) window in memory, bounded by count and age. That is all it does:
a few dict and deque operations per detection. Every `evaluate_every_pairs` pairs of an edge, a task
of the controller persists the new pairs (`cloud.store.pairs`, SQLite in a thread), computes each
class's optimum in a worker thread (`cloud.policy.bands.plan_band`: minimum counts, hysteresis) and,
unless the edge's policy moved less than `min_interval_s` ago, publishes the moved bands through
`PolicyEngine.adjust_loop`: a new signed version, persisted and pushed to the edge.

The same evaluation sizes each camera's other rules from the outcomes of its samples
(`cloud.policy.motion` for the motion rule; `cloud.policy.rules` for the audit rate and the watch
list's re-ask interval) and writes them to the edge's `mining.cameras`; what moves in one
evaluation, bands and rules, is one version whose reason holds every move's evidence. Their
evidence (`cloud.policy.evidence`) is kept with the pairs, so it survives a restart and, on a shared
store, reaches the leader from every replica; the moves are in the history and restored.

The window and the band history survive a restart (SQLite). The engine keeps operators' settings
from cloud.yaml only, so at start the controller publishes again the last band it set for each class
whose band in force differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from cloud.convert import SampleInput
from cloud.policy.bands import BandPlan, ScorePair, edge_decisions, estimate, plan_band
from cloud.policy.engine import PolicyEngine
from cloud.policy.evidence import AUDIT, MOTION, RULE_FIELDS, RuleEvidence, RuleKey
from cloud.policy.loop_config import BandMetrics, ClosedLoopConfig
from cloud.policy.motion import MotionPlan, plan_motion_area
from cloud.policy.rules import RulePlan, plan_audit_rate, plan_watch_reask
from cloud.policy.settings import Band, PolicySettings, PolicyValidationError
from cloud.store import StoreError
from cloud.store.pairs import BandMoveRow, PairRow, PairStore
from protos import verdict_pb2

logger = logging.getLogger(__name__)
Key = tuple[str, str]  # (edge_id, label)
# The per-camera rules' moves share the band-move history (low = high = the value) under a label
# "rule:<field>@<camera>"; "rule:<field>" alone is an edge-wide move of an earlier version.
RULE_PREFIX = "rule:"
_JUDGED = (verdict_pb2.DECISION_CONFIRMED, verdict_pb2.DECISION_REJECTED)
__all__ = ["BandController", "ClosedLoopConfig", "edge_decisions", "rule_label"]


def rule_label(field: str, camera_id: str) -> str:
    """The history label of a per-camera rule's moves."""
    return f"{RULE_PREFIX}{field}@{camera_id}" if camera_id else f"{RULE_PREFIX}{field}"


def _parse_rule_label(label: str) -> tuple[str, str] | None:
    """(field, camera) of a rule's history label ("" for an edge-wide move), None for a class band."""
    if not label.startswith(RULE_PREFIX):
        return None
    field, _, camera = label.removeprefix(RULE_PREFIX).partition("@")
    return (field, camera) if field in RULE_FIELDS else None


def _band_of(settings: PolicySettings, label: str) -> Band:
    return settings.mining.bands.get(label, settings.mining.default_band)


def _plan_all(inputs: Mapping[str, tuple[list[ScorePair], Band]], config: ClosedLoopConfig) -> dict[str, BandPlan]:
    return {
        label: plan_band(
            pairs,
            (band.low, band.high),
            target_recall=config.target_recall,
            target_precision=config.target_precision,
            hysteresis=config.hysteresis,
            min_pairs=config.min_pairs,
            min_audit_pairs=config.min_audit_pairs,
        )
        for label, (pairs, band) in inputs.items()
    }


class BandController:
    """Keeps the pairs of every (edge, class), moves their bands through the policy engine."""

    def __init__(
        self,
        config: ClosedLoopConfig,
        engine: PolicyEngine,
        store: PairStore,
        registry: CollectorRegistry,
        *,
        site_of: Callable[[str], str] | None = None,
        clock: Callable[[], float] = time.time,
        leader: Callable[[], bool] | None = None,
    ) -> None:
        """Feed from `engine`'s verdicts, persist in `store`; `site_of` names an edge's site (its policy's layer).

        `leader` (replicas on one store): whether this replica runs the loop now. Given, the band
        windows are fed from the store, every replica's pairs as they are written, and only the leader
        evaluates and publishes; the others write their pairs and wait. The per-camera rules' outcomes
        (motion, audit, re-ask) reach the leader the same way.
        """
        self._config = config
        self._leader = leader
        self._pulled_new: dict[str, int] = {}  # shared store: pairs pulled per edge since its last evaluation
        self._engine = engine
        self._store = store
        self._metrics = BandMetrics(registry)
        self._site_of = site_of or (lambda edge_id: "")
        self._clock = clock
        self._windows: dict[Key, deque[ScorePair]] = {}
        self._history: dict[Key, deque[BandMoveRow]] = {}
        self._plans: dict[Key, tuple[float, BandPlan]] = {}
        self._unsaved: deque[PairRow] = deque()
        self._new_pairs: dict[str, int] = {}
        self._due: set[str] = set()
        self._last_move: dict[str, float] = {}
        self._settings_cache: dict[str, tuple[tuple[int, str], PolicySettings]] = {}
        self._evidence = RuleEvidence(config, leader is not None, self._mark_due, clock)
        self._rule_plans: dict[RuleKey, tuple[float, MotionPlan | RulePlan]] = {}
        self._wake = asyncio.Event()
        self._evaluating = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def config(self) -> ClosedLoopConfig:
        """The closed loop's settings."""
        return self._config

    async def start(self) -> None:
        """Load the window and the band history from SQLite, publish the last bands again, start evaluating."""
        await self._store.open()
        now = self._clock()
        if self._leader is not None:
            await self._pull()
        else:
            for row in await self._store.load_pairs(now - self._config.window_age_s):
                pair = ScorePair(row.score, row.confirmed, row.weight, row.audit, row.observed_at)
                self._window((row.edge_id, row.label)).append(pair)
            for outcome in await self._store.pull_new_rules(now - self._config.window_age_s):
                self._evidence.add(outcome)
        moves = await self._store.load_moves()
        for move in moves:
            key = (move.edge_id, move.label)
            self._history.setdefault(key, deque(maxlen=self._config.history_per_key)).append(move)
            self._last_move[move.edge_id] = max(self._last_move.get(move.edge_id, move.moved_at), move.moved_at)
        await self._restore(moves)
        logger.info(
            "closed loop: %d pairs in %d windows and %d band moves loaded from %s",
            sum(map(len, self._windows.values())),
            len(self._windows),
            len(moves),
            self._store.where,
        )
        self._task = asyncio.create_task(self._run(), name="band-controller")

    def observe(self, sample: SampleInput, verdict: verdict_pb2.Verdict) -> None:
        """Take the pairs of one backend verdict (on the event loop: O(detections), no I/O; never raises)."""
        try:
            self._observe(sample, verdict)
        except Exception:
            self._metrics.errors.labels("observe").inc()
            logger.exception("closed loop: verdict of %s not observed", sample.sample_id)

    async def evaluate(self, edge_id: str) -> int | None:
        """Evaluate every class of one edge now; the policy version that moved bands, or None if none moved."""
        async with self._evaluating:
            return await self._evaluate(edge_id)

    def snapshot(self) -> dict[str, Any]:
        """The loop's state for the admin API and the dashboard (O(pairs held): call it per request, not per sample).

        Shape::

            {"target_recall": 0.95, "target_precision": 0.95, "window_pairs": 2000, "window_age_s": 86400.0,
             "edges": {edge_id: {label: {
                 "band": {"low": 0.25, "high": 0.6},        # in force for the edge now
                 "pairs": 812, "audit_pairs": 31, "confirmed_pairs": 404,   # the window now
                 "recall": 0.97 | None, "precision": 0.99, "upload": 0.41,  # of that band on the window
                 "last_evaluation": None | {         # the last time the controller looked at the class
                     "at": unix_s, "band": {"low", "high"},        # the band it found in force
                     "recall", "precision", "upload",              # that band's estimates then
                     "target": None | {"low", "high"},             # the optimum then (None: undecidable)
                     "why": str},                                  # the move, or why it held
                 "history": [{"at": unix_s, "low", "high", "version": int, "reason": str}, ...],  # oldest first
             }}},
             "rules": {edge_id: {camera_id: {field: {   # the per-camera rules (motion, audit, watch re-ask)
                 "value": float,                     # in force for the camera now
                 "samples": int, "hits": int,        # the evidence window; hits: outcomes against the value
                 "last_evaluation": None | {"at": unix_s, "why": str},
                 "history": [{"at": unix_s, "value", "version": int, "reason": str}, ...],
             }}}}}

        recall, precision and upload are the weighted estimates of `cloud.policy.bands` (recall None
        while no object of the class was confirmed).
        """
        now = self._clock()
        edges: dict[str, dict[str, Any]] = {}
        for key in sorted(set(self._windows) | set(self._history)):
            edge_id, label = key
            if label.startswith(RULE_PREFIX):
                continue
            band = _band_of(self._settings(edge_id), label)
            window = self._windows.get(key, deque())
            self._expire(window, now)
            shown = estimate(window, band.low, band.high)
            last = self._plans.get(key)
            edges.setdefault(edge_id, {})[label] = {
                "band": {"low": band.low, "high": band.high},
                "pairs": shown.pairs,
                "audit_pairs": shown.audit_pairs,
                "confirmed_pairs": shown.confirmed_pairs,
                "recall": shown.recall,
                "precision": shown.precision,
                "upload": shown.upload,
                "last_evaluation": None if last is None else _evaluation_json(*last),
                "history": [
                    {"at": m.moved_at, "low": m.low, "high": m.high, "version": m.version, "reason": m.reason}
                    for m in self._history.get(key, ())
                ],
            }
        config = self._config
        return {
            "target_recall": config.target_recall,
            "target_precision": config.target_precision,
            "window_pairs": config.window_pairs,
            "window_age_s": config.window_age_s,
            "edges": edges,
            "rules": self._rules_snapshot(),
        }

    def _rules_snapshot(self) -> dict[str, Any]:
        """{edge: {camera: {field: {"value", "samples", "hits", "last_evaluation", "history"}}}}; see snapshot.

        `hits` counts the evidence against the value: motion samples the cloud rejected, audited local
        decisions it contradicted, re-asks that changed its answer.
        """
        keys = self._evidence.keys() | set(self._rule_plans)
        for edge_id, label in self._history:
            parsed = _parse_rule_label(label)
            if parsed is not None:
                keys.add((edge_id, parsed[1], parsed[0]))
        rules: dict[str, Any] = {}
        for key in sorted(keys):
            edge_id, camera_id, name = key
            window = self._evidence.get(key) or deque()
            hits = sum(bool(item[1]) if isinstance(item, tuple) else bool(item) for item in window)
            last = self._rule_plans.get(key)
            mining = self._settings(edge_id).mining.for_camera(camera_id)
            rules.setdefault(edge_id, {}).setdefault(camera_id, {})[name] = {
                "value": getattr(mining, name),
                "samples": len(window),
                "hits": hits,
                "last_evaluation": None if last is None else {"at": last[0], "why": last[1].why},
                "history": [
                    {"at": m.moved_at, "value": m.low, "version": m.version, "reason": m.reason}
                    for m in self._history.get((edge_id, rule_label(name, camera_id)), ())
                ],
            }
        return rules

    async def close(self) -> None:
        """Stop evaluating (an evaluation under way finishes: its moves are all recorded), write the pairs, close."""
        if self._task is not None:
            async with self._evaluating:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(StoreError):  # logged and counted in _flush
            await self._flush()
        await self._store.close()

    def _observe(self, sample: SampleInput, verdict: verdict_pb2.Verdict) -> None:
        detections = sample.detections
        self._evidence.observe(sample, verdict)
        if not detections:
            return
        if verdict.decision not in _JUDGED:
            self._metrics.dropped.labels("unsure").inc(len(detections))
            return
        audit = sample.mined_reason == "random_audit"
        weight = 1.0
        mining = self._settings(sample.edge_id).mining
        if audit:
            mining = mining.for_camera(sample.camera_id)
            rate = mining.random_audit_rate if mining.random_audit_enabled else 0.0
            if rate <= 0.0:  # an audit the current policy no longer asks for: its chance is unknown
                self._metrics.dropped.labels("no_audit_rate").inc(len(detections))
                return
            weight = 1.0 / rate
        now = self._clock()
        edge_id = sample.edge_id
        for detection, confirmed in zip(
            detections, edge_decisions(sample, verdict, self._config.match_iou), strict=True
        ):
            pair = ScorePair(detection.score, confirmed, weight, audit, now)
            if self._leader is None:  # shared: the pair reaches the windows from the store (`_pull`)
                self._window((edge_id, detection.label)).append(pair)
            band = mining.band_for(detection.label)
            if audit and not band.low <= detection.score <= band.high:
                # A decision the edge made alone: a local event above the band, dropped below it.
                self._evidence.audit(edge_id, sample.camera_id, confirmed != (detection.score > band.high))
            if len(self._unsaved) >= self._config.max_unsaved_pairs:
                self._unsaved.popleft()
                self._metrics.dropped.labels("not_saved").inc()
            self._unsaved.append(PairRow(edge_id, detection.label, detection.score, confirmed, weight, audit, now))
            self._metrics.pairs.labels("confirmed" if confirmed else "rejected").inc()
        if self._counted(self._new_pairs, edge_id, len(detections)):
            if self._leader is None:  # shared: `_pull` counts the pairs (every replica's) and marks the edge
                self._due.add(edge_id)
            self._wake.set()

    def _mark_due(self, edge_id: str) -> None:
        """Evaluate `edge_id` soon: its rules have new evidence."""
        self._due.add(edge_id)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: wait_for may swallow a cancel on 3.11
                async with asyncio.timeout(self._config.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            with contextlib.suppress(StoreError):  # logged and counted; the pairs stay in memory
                await self._flush()
            if self._leader is not None:
                if not self._leader():
                    self._due.clear()  # another replica leads: it evaluates, from every replica's pairs
                    continue
                with contextlib.suppress(StoreError):
                    await self._pull()
            due, self._due = self._due, set()
            for edge_id in sorted(due):
                try:
                    await self.evaluate(edge_id)
                except Exception:
                    self._metrics.errors.labels("evaluate").inc()
                    logger.exception("closed loop: evaluating the bands of edge %s failed", edge_id)

    async def _flush(self) -> None:
        rows = list(self._unsaved)
        outcomes = list(self._evidence.unsaved)
        try:
            await self._store.add_pairs(rows)
            await self._store.add_rule_outcomes(outcomes)
            await self._store.prune_pairs(self._clock() - self._config.window_age_s)
        except StoreError:
            self._metrics.errors.labels("flush").inc()
            logger.exception("closed loop: %d pairs not written (kept in memory, retried)", len(rows))
            raise
        for queue, written in ((self._unsaved, len(rows)), (self._evidence.unsaved, len(outcomes))):
            for _ in range(min(written, len(queue))):  # those observed meanwhile stay queued
                queue.popleft()

    async def _pull(self) -> None:
        """Shared store: take the pairs every replica wrote since the last pull into the windows."""
        since = self._clock() - self._config.window_age_s
        try:
            rows = await self._store.pull_new(since)
            outcomes = await self._store.pull_new_rules(since)
        except StoreError:
            self._metrics.errors.labels("pull").inc()
            logger.exception("closed loop: the pairs of the other replicas could not be read")
            raise
        for row in rows:
            pair = ScorePair(row.score, row.confirmed, row.weight, row.audit, row.observed_at)
            self._window((row.edge_id, row.label)).append(pair)
            if self._counted(self._pulled_new, row.edge_id, 1):
                self._due.add(row.edge_id)
        for outcome in outcomes:
            self._evidence.add(outcome)

    def _counted(self, counter: dict[str, int], edge_id: str, pairs: int) -> bool:
        """Count `pairs` new pairs of an edge; True (and the count starts again) when they call for an evaluation."""
        count = counter.get(edge_id, 0) + pairs
        counter[edge_id] = 0 if count >= self._config.evaluate_every_pairs else count
        return count >= self._config.evaluate_every_pairs

    async def _evaluate(self, edge_id: str) -> int | None:
        """Plan every class band and per-camera rule of one edge; what moved becomes one signed version."""
        now = self._clock()
        if now - self._last_move.get(edge_id, float("-inf")) < self._config.min_interval_s:
            return None
        settings = self._settings(edge_id)
        inputs: dict[str, tuple[list[ScorePair], Band]] = {}
        for (edge, label), window in self._windows.items():
            if edge == edge_id:
                self._expire(window, now)
                inputs[label] = (list(window), _band_of(settings, label))
        plans = await asyncio.to_thread(_plan_all, inputs, self._config)
        for label, plan in plans.items():
            self._plans[(edge_id, label)] = (now, plan)
            self._metrics.low.labels(edge_id, label).set(plan.current.low)
            self._metrics.high.labels(edge_id, label).set(plan.current.high)
        moved = {label: plan.proposed for label, plan in plans.items() if plan.proposed is not None}
        bands = {label: Band(low=p.low, high=p.high) for label, p in moved.items()}
        rules = self._plan_rules(edge_id, settings, now)
        if not bands and not rules:
            return None
        cameras: dict[str, dict[str, float]] = {}
        for (_, camera_id, name), (value, _) in rules.items():
            cameras.setdefault(camera_id, {})[name] = value
        reasons = [f"{label} {plans[label].why}" for label in sorted(moved)]
        reasons += [f"{camera} {name}: {why}" for (_, camera, name), (_, why) in sorted(rules.items())]
        version = await self._engine.adjust_loop(edge_id, bands, cameras, "closed loop: " + "; ".join(reasons))
        self._last_move[edge_id] = now
        rows = [
            BandMoveRow(edge_id, label, now, b.low, b.high, version, plans[label].why) for label, b in bands.items()
        ]
        for (_, camera_id, name), (value, why) in sorted(rules.items()):
            if name == MOTION:
                self._evidence.clear((edge_id, camera_id, name), now)  # gathered under the old threshold
            rows.append(BandMoveRow(edge_id, rule_label(name, camera_id), now, value, value, version, why))
        for row in rows:
            self._history.setdefault((edge_id, row.label), deque(maxlen=self._config.history_per_key)).append(row)
            self._metrics.moves.labels(edge_id, row.label).inc()
            if row.label in bands:
                self._metrics.low.labels(edge_id, row.label).set(row.low)
                self._metrics.high.labels(edge_id, row.label).set(row.high)
            logger.info("closed loop: edge %s %s moved (policy v%d): %s", edge_id, row.label, version, row.reason)
            try:
                await self._store.add_move(row)
            except StoreError:
                self._metrics.errors.labels("flush").inc()
                logger.exception("closed loop: move of edge %s %s not recorded", edge_id, row.label)
        return version

    def _plan_rule(self, key: RuleKey, window: deque[Any], mining: Any) -> MotionPlan | RulePlan:
        config = self._config
        name = key[2]
        current = float(getattr(mining, name))
        if name == MOTION:
            return plan_motion_area(
                list(window),
                current,
                target_recall=config.target_recall,
                reject_share=config.motion_reject_share,
                min_samples=config.motion_min_samples,
                max_area=config.motion_max_area,
                hysteresis=config.hysteresis * 10,  # relative: 20 % by default
            )
        if name == AUDIT:
            return plan_audit_rate(
                list(window),
                current if mining.random_audit_enabled else 0.0,
                tolerance=1.0 - config.target_precision,
                min_samples=config.audit_min_samples,
                min_rate=config.audit_min_rate,
                max_rate=config.audit_max_rate,
            )
        return plan_watch_reask(
            list(window),
            current,
            changed_share=config.watch_changed_share,
            min_samples=config.watch_min_samples,
            min_interval_s=config.watch_min_interval_s,
            max_interval_s=config.watch_max_interval_s,
        )

    def _plan_rules(self, edge_id: str, settings: PolicySettings, now: float) -> dict[RuleKey, tuple[float, str]]:
        """The per-camera rules of one edge that move: (new value, why) by (edge, camera, field)."""
        enabled = {MOTION: self._config.motion_enabled, AUDIT: self._config.audit_enabled}
        moved: dict[RuleKey, tuple[float, str]] = {}
        for key, window in self._evidence.items():
            if key[0] != edge_id or not window or not enabled.get(key[2], self._config.watch_enabled):
                continue
            plan = self._plan_rule(key, window, settings.mining.for_camera(key[1]))
            self._rule_plans[key] = (now, plan)
            if plan.proposed is not None:
                moved[key] = (round(plan.proposed, 6), plan.why)
        return moved

    async def _restore(self, moves: list[BandMoveRow]) -> None:
        latest: dict[str, dict[str, Band]] = {}
        rules: dict[str, dict[str, dict[str, float]]] = {}  # edge -> camera ("" edge-wide) -> field -> value
        for move in moves:
            parsed = _parse_rule_label(move.label)
            if parsed is not None:
                rules.setdefault(move.edge_id, {}).setdefault(parsed[1], {})[parsed[0]] = move.low
                continue
            latest.setdefault(move.edge_id, {})[move.label] = Band(low=move.low, high=move.high)
        for edge_id, bands in sorted(latest.items()):
            settings = self._settings(edge_id)
            differing = {label: band for label, band in bands.items() if _band_of(settings, label) != band}
            for label, band in bands.items():
                self._metrics.low.labels(edge_id, label).set(band.low)
                self._metrics.high.labels(edge_id, label).set(band.high)
            if not differing:
                continue
            try:
                await self._engine.adjust_bands(edge_id, differing, "closed loop: bands restored after a restart")
            except PolicyValidationError:
                self._metrics.errors.labels("restore").inc()
                logger.exception("closed loop: the last bands of edge %s no longer fit its policy", edge_id)
        for edge_id, by_camera in sorted(rules.items()):
            mining = self._settings(edge_id).mining
            edge_wide = {n: v for n, v in by_camera.pop("", {}).items() if getattr(mining, n) != v}
            cameras: dict[str, dict[str, float]] = {}
            for camera, values in by_camera.items():
                own = mining.for_camera(camera)
                if changed := {n: v for n, v in values.items() if getattr(own, n) != v}:
                    cameras[camera] = changed
            try:
                if edge_wide:
                    await self._engine.adjust_mining(edge_id, edge_wide, "closed loop: rules restored after a restart")
                if cameras:
                    await self._engine.adjust_loop(edge_id, {}, cameras, "closed loop: rules restored after a restart")
            except PolicyValidationError:
                self._metrics.errors.labels("restore").inc()
                logger.exception("closed loop: the last rules of edge %s no longer fit its policy", edge_id)

    def _window(self, key: Key) -> deque[ScorePair]:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque(maxlen=self._config.window_pairs)
        return window

    def _expire(self, window: deque[ScorePair], now: float) -> None:
        oldest = now - self._config.window_age_s
        while window and window[0].observed_at < oldest:
            window.popleft()

    def _settings(self, edge_id: str) -> PolicySettings:
        """The edge's merged policy settings, recomputed only when its version or site changes."""
        site_id = self._site_of(edge_id)
        stamp = (self._engine.version_for(edge_id, site_id), site_id)
        cached = self._settings_cache.get(edge_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        settings = self._engine.effective(edge_id, site_id)[0]
        self._settings_cache[edge_id] = (stamp, settings)
        return settings


def _evaluation_json(at: float, plan: BandPlan) -> dict[str, Any]:
    now = plan.current
    target = None if plan.target is None else {"low": plan.target[0], "high": plan.target[1]}
    return {
        "at": at,
        "band": {"low": now.low, "high": now.high},
        "recall": now.recall,
        "precision": now.precision,
        "upload": now.upload,
        "target": target,
        "why": plan.why,
    }
