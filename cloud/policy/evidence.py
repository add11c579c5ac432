"""The evidence the closed loop's per-camera rules learn from: one window of outcomes per (edge, camera, rule).

- motion (`motion_min_area_fraction`): each judged motion sample, its moving share of the frame and
  whether the cloud rejected it;
- audit (`random_audit_rate`): each audited detection the edge decided alone, whether the cloud
  contradicted that decision;
- watch (`watch_reask_interval_s`): each re-ask of a watched object, whether the answer changed.

Every outcome is a `RuleRow`, written to the pair store with the score pairs (`cloud.store.pairs`).
Alone, a replica puts its outcomes in the windows at once and loads them back at a restart. On a
store replicas share, every replica writes its outcomes and the leader takes them into its windows
from the store (`add`, from `BandController._pull`), so its rules learn from the verdicts of every
replica, not only its own. A window cleared after a move (the motion threshold changed: what was seen
under the old one says nothing of the new) ignores outcomes observed before the clearing.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

from cloud.convert import SampleInput
from cloud.policy.loop_config import ClosedLoopConfig
from cloud.store.pairs import RuleRow
from protos import verdict_pb2

RuleKey = tuple[str, str, str]  # (edge_id, camera_id, policy field)
MOTION = "motion_min_area_fraction"
AUDIT = "random_audit_rate"
WATCH = "watch_reask_interval_s"
RULE_FIELDS = (MOTION, AUDIT, WATCH)
_JUDGED = (verdict_pb2.DECISION_CONFIRMED, verdict_pb2.DECISION_REJECTED)


class RuleEvidence:
    """Windows of rule outcomes, fed by verdicts (`observe`, `audit`) or rows from the store (`add`)."""

    def __init__(
        self, config: ClosedLoopConfig, shared: bool, on_evidence: Callable[[str], None], clock: Callable[[], float]
    ) -> None:
        """`shared`: outcomes reach the windows from the store only; `on_evidence(edge_id)` when an edge has
        enough new outcomes to be evaluated (a quarter of a rule's minimum)."""
        self._config = config
        self._shared = shared
        self._on_evidence = on_evidence
        self._clock = clock
        self._windows: dict[RuleKey, deque[Any]] = {}
        self._cleared_at: dict[RuleKey, float] = {}
        self._new: dict[str, int] = {}
        self._answers: OrderedDict[tuple[str, str, str], int] = OrderedDict()  # watched track -> last decision
        self.unsaved: deque[RuleRow] = deque()  # written to the store by the controller's flush

    def observe(self, sample: SampleInput, verdict: verdict_pb2.Verdict) -> None:
        """The motion and watch outcomes of one backend verdict (on the event loop, no I/O)."""
        if verdict.decision not in _JUDGED:
            return
        if sample.mined_reason == "motion_without_detection" and self._config.motion_enabled:
            rejected = verdict.decision == verdict_pb2.DECISION_REJECTED
            self._record(sample.edge_id, sample.camera_id, MOTION, sample.motion_area_fraction, rejected)
        if sample.mined_reason == "watch_list" and sample.track_id and self._config.watch_enabled:
            track = (sample.edge_id, sample.camera_id, sample.track_id)
            before = self._answers.pop(track, None)
            self._answers[track] = verdict.decision
            while len(self._answers) > self._config.tracks_remembered:
                self._answers.popitem(last=False)
            if before is not None:  # a re-ask: the object was judged before
                self._record(sample.edge_id, sample.camera_id, WATCH, 0.0, before != verdict.decision)

    def audit(self, edge_id: str, camera_id: str, contradicted: bool) -> None:
        """One audited decision the edge made alone, and whether the cloud contradicted it."""
        if self._config.audit_enabled:
            self._record(edge_id, camera_id, AUDIT, 0.0, contradicted)

    def add(self, row: RuleRow) -> None:
        """Put one outcome in its window (a local one at once, or one read from the store)."""
        key = (row.edge_id, row.camera_id, row.rule)
        if row.rule not in RULE_FIELDS or row.observed_at < self._cleared_at.get(key, float("-inf")):
            return
        self.window(key).append((row.value, row.outcome) if row.rule == MOTION else row.outcome)
        count = self._new.get(row.edge_id, 0) + 1
        minimum = {MOTION: self._config.motion_min_samples, AUDIT: self._config.audit_min_samples}.get(
            row.rule, self._config.watch_min_samples
        )
        if count >= max(1, minimum // 4):
            count = 0
            self._on_evidence(row.edge_id)
        self._new[row.edge_id] = count

    def window(self, key: RuleKey) -> deque[Any]:
        """The outcomes of one rule of one camera (motion: (area share, rejected); audit, watch: a bool)."""
        window = self._windows.get(key)
        if window is None:
            size = {MOTION: self._config.motion_window, AUDIT: self._config.audit_window}.get(
                key[2], self._config.watch_window
            )
            window = self._windows[key] = deque(maxlen=size)
        return window

    def get(self, key: RuleKey) -> deque[Any] | None:
        """The window of `key`, or None when nothing was observed for it."""
        return self._windows.get(key)

    def clear(self, key: RuleKey, at: float) -> None:
        """Forget the outcomes of `key` and ignore any observed before `at`."""
        self.window(key).clear()
        self._cleared_at[key] = at

    def items(self) -> Iterator[tuple[RuleKey, deque[Any]]]:
        """Every (key, window), sorted by key."""
        return iter(sorted(self._windows.items()))

    def keys(self) -> set[RuleKey]:
        """Every key with a window."""
        return set(self._windows)

    def _record(self, edge_id: str, camera_id: str, rule: str, value: float, outcome: bool) -> None:
        row = RuleRow(edge_id, camera_id, rule, float(value), bool(outcome), self._clock())
        if len(self.unsaved) >= self._config.max_unsaved_pairs:
            self.unsaved.popleft()
        self.unsaved.append(row)
        if not self._shared:  # shared: it reaches the leader's windows from the store
            self.add(row)
