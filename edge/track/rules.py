"""One tracked object's watch rules: which it asked, what the cloud answered, which matched.

The track book (`edge.track.book`) decides when a track asks; this keeps the per-rule state of one
track: a rule is due when never asked, or answered `unsure` longer ago than the policy's
`resend_interval_s` (capture time); the rules of an open question window go with its question; a
`matched` answer (never on a rejection) becomes an entry of the track's events (`rules`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.detect import Detection
from edge.convert import EdgeVerdict
from edge.policy.settings import MiningPolicy
from protos.policy_settings import WatchRule


@dataclass(slots=True)
class TrackRules:
    """The watch rules of one track."""

    asked: dict[str, tuple[float, str | None]] = field(default_factory=dict)  # id -> (when, answer; None: waiting)
    window: set[str] = field(default_factory=set)  # the rules the open question window asks
    worded: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (text, severity) when asked
    matched: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> its event entry

    def due(
        self, policy: MiningPolicy, detection: Detection, frame_size: tuple[int, int], captured_at: float
    ) -> list[WatchRule]:
        """The policy's rules this object is a candidate of and should ask now."""
        return [
            rule
            for rule in policy.watch_rules
            if rule.is_candidate(detection.label, detection.box, frame_size)
            and self._due(rule.rule_id, captured_at, policy.resend_interval_s)
        ]

    def join(self, rules: list[WatchRule]) -> None:
        """These rules go with the open window's question (worded as the policy words them now)."""
        for rule in rules:
            self.window.add(rule.rule_id)
            self.worded[rule.rule_id] = (rule.text, rule.severity)

    def take_window(self) -> tuple[str, ...]:
        """The rules of the question leaving now; the window is empty after."""
        ids, self.window = tuple(sorted(self.window)), set()
        return ids

    def sent(self, rule_ids: tuple[str, ...], captured_at: float) -> None:
        """A question asking `rule_ids` is on its way."""
        for rule_id in rule_ids:
            self.asked[rule_id] = (captured_at, None)

    def answered(self, verdict: EdgeVerdict) -> bool:
        """Keep a verdict's rule answers; whether a rule newly matched (never on a rejection)."""
        newly = False
        for answer in verdict.rule_answers:
            asked = self.asked.get(answer.rule_id)
            if asked is None:
                continue  # not a rule this track asked (a stale or foreign answer)
            self.asked[answer.rule_id] = (asked[0], answer.match)
            if answer.match != "matched" or verdict.decision == "rejected" or answer.rule_id in self.matched:
                continue
            text, severity = self.worded.get(answer.rule_id, ("", "warning"))
            self.matched[answer.rule_id] = {
                "id": answer.rule_id,
                "text": text,
                "severity": severity,
                "reason": answer.reason,
            }
            newly = True
        return newly

    def _due(self, rule_id: str, captured_at: float, interval: float) -> bool:
        if rule_id in self.window:
            return False
        asked = self.asked.get(rule_id)
        if asked is None:
            return True
        at, answer = asked
        return answer == "unsure" and interval > 0 and captured_at - at >= interval
