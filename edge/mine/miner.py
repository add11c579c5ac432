"""The miner: asks every enabled strategy about a frame and composes one decision.

Strategies are asked in a fixed precedence (`edge.mine.strategies.PRECEDENCE`):

    watch_list > uncertainty_band > ibt > cross_entropy > motion_without_detection > random_audit

The first strategy that fires names the reason; the others that fired are listed in the detail so
people and the cloud see every rule the frame broke. The priority is the highest any of them gave,
so a frame that is both watch-listed and deeply unsure is sent as early as its doubt deserves.
Fallback strategies (the random audit) are asked only when no other strategy fired, since an audit
sample must come from the frames the edge would otherwise keep to itself.

kind is "suspicious" when any strategy fired, else "confident" when a detection scored above its
band's high, else "nothing". Confident detections are returned in every case: an event the edge is
sure of is acted on locally even when the frame also goes up.

Two rules then apply to the composed decision, here and nowhere else:
- `send_every_frame` (config, for the cloud-only baseline and data collection): a frame no strategy
  fired on goes up all the same, as an audit sample.
- the policy's `resend_interval_s`: a camera that sent the same labels for the same reason within the
  interval (in capture time) holds the frame back (`held_back="resend_interval"`); audits never are.
  This is the per-frame rule (`per_frame_repeats`, the baselines that ask per frame); when the edge
  asks per tracked object, the track book (`edge.track.book`) decides when an object asks again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from edge.mine.base import DecisionKind, MiningContext, MiningDecision, MiningStrategy, StrategyVote
from edge.mine.strategies import default_strategies
from edge.policy.settings import MiningPolicy
from protos.reasons import MinedReasonName


class Miner:
    """Hard-example mining under a `MiningPolicy` that can be replaced between frames."""

    def __init__(
        self,
        policy: MiningPolicy,
        rng: random.Random | None = None,
        strategies: Sequence[MiningStrategy] | None = None,
        *,
        send_every_frame: bool = False,
        per_frame_repeats: bool = True,
    ) -> None:
        self._policy = policy
        self._per_camera: dict[str, MiningPolicy] = {}
        self._send_every_frame = send_every_frame
        self._per_frame_repeats = per_frame_repeats
        self._last_sent: dict[tuple[str, str, tuple[str, ...]], float] = {}
        self._strategies = tuple(strategies) if strategies is not None else default_strategies(rng or random.Random())
        names = [strategy.name for strategy in self._strategies]
        if len(set(names)) != len(names):
            raise ValueError(f"Miner: strategies {names} name the same reason twice")

    @property
    def policy(self) -> MiningPolicy:
        """The policy in force."""
        return self._policy

    def update_policy(self, policy: MiningPolicy) -> None:
        """Use `policy` from the next frame on."""
        self._policy = policy
        self._per_camera = {}

    def camera_policy(self, camera_id: str) -> MiningPolicy:
        """The policy in force for one camera (its `mining.cameras` values applied), made once per policy."""
        policy = self._per_camera.get(camera_id)
        if policy is None:
            policy = self._per_camera[camera_id] = self._policy.for_camera(camera_id)
        return policy

    def decide(self, ctx: MiningContext) -> MiningDecision:
        """Confident, suspicious or nothing for one frame, with the reason, detail and priority."""
        decision = self._compose(ctx)
        if self._send_every_frame and decision.kind != "suspicious":
            detail = "every frame is sent (pipeline.send_every_frame)"
            return MiningDecision("suspicious", "random_audit", detail, 0.05, decision.confident)
        if decision.kind == "suspicious" and self._per_frame_repeats and self._sent_recently(ctx, decision):
            kind: DecisionKind = "confident" if decision.confident else "nothing"
            return MiningDecision(kind, None, decision.detail, 0.0, decision.confident, held_back="resend_interval")
        return decision

    def _sent_recently(self, ctx: MiningContext, decision: MiningDecision) -> bool:
        """True when this camera sent the same labels for the same reason within the policy's interval."""
        interval = self._policy.resend_interval_s
        if interval <= 0 or decision.reason in (None, "random_audit"):
            return False
        key = (ctx.camera_id, str(decision.reason), tuple(sorted({d.label for d in ctx.detections})))
        last = self._last_sent.get(key)
        if last is not None and 0 <= ctx.captured_at - last < interval:
            return True
        if len(self._last_sent) > 4096:  # bounded: forget the oldest half
            for stale in sorted(self._last_sent, key=self._last_sent.__getitem__)[:2048]:
                del self._last_sent[stale]
        self._last_sent[key] = ctx.captured_at
        return False

    def _compose(self, ctx: MiningContext) -> MiningDecision:
        """What the strategies say of the frame, under its camera's values of the policy."""
        policy = self.camera_policy(ctx.camera_id)
        confident = tuple(d for d in ctx.detections if d.score > policy.band_for(d.label).high)
        votes = self._votes(ctx, policy, fallback=False) or self._votes(ctx, policy, fallback=True)
        if votes:
            (reason, first), *others = votes
            detail = first.detail
            if others:
                detail += "; also " + "; ".join(f"{name}: {vote.detail}" for name, vote in others)
            priority = max(vote.priority for _, vote in votes)
            return MiningDecision("suspicious", reason, detail, priority, confident)
        if confident:
            labels = ", ".join(f"{d.label} {d.score:.2f}" for d in confident)
            return MiningDecision("confident", None, labels, 0.0, confident)
        return MiningDecision("nothing", None, "", 0.0, confident)

    def _votes(
        self, ctx: MiningContext, policy: MiningPolicy, fallback: bool
    ) -> list[tuple[MinedReasonName, StrategyVote]]:
        votes: list[tuple[MinedReasonName, StrategyVote]] = []
        for strategy in self._strategies:
            if strategy.fallback != fallback or not strategy.enabled(policy):
                continue
            vote = strategy.evaluate(ctx, policy)
            if vote is not None:
                votes.append((strategy.name, vote))
        return votes
