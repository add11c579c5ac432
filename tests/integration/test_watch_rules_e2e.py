"""Watch rules in plain words through real processes' parts: a real cloud service (grpc.aio, or the MQTT
bridge on Debian's mosquitto), its `openai` backend against a real OpenAI-compatible HTTP server
(sim.openai_server, scripted: it answers the rules the prompt lists), and a real edge agent.

The rule is set on the cloud, reaches the edge in its signed policy, the edge's sample names it, the
cloud asks the model the rule's words from its own policy, the verdict answers it, and the edge's
event names the matched rule with its severity.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cloud.backends import OpenAIBackendConfig
from cloud.backends.verdict_text import RULES_HEADER
from edge.agent import EdgeAgent
from edge.status import counter_total
from protos import session_pb2, verdict_pb2
from sim.openai_server import ChatInput, Reply, ScriptedGenerator, ServerStats, create_app, serving
from tests.helpers.agents import SILENT, cloud_config, edge_config, make_agent_clip
from tests.helpers.broker import MosquittoBroker
from tests.helpers.cloud import WAIT_S, busy_frames, channel, counter, make_config, make_sample, running
from tests.helpers.wait import wait_until

RULE = {
    "rule_id": "in-view",
    "text": "an object standing in view of the camera",
    "labels": ["person", "cat", "motorcycle", "cup", "rocket"],
    "severity": "critical",
}
RULE_LINE = re.compile(r"^\[([^\]]+)\] (.+)$", re.MULTILINE)


class RuleScript:
    """Confirms every sample and answers each listed rule `matched`; remembers the rule lines it was shown."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def __call__(self, chat: ChatInput) -> Reply:
        rules: list[dict[str, str]] = []
        if RULES_HEADER in chat.text:
            listed = RULE_LINE.findall(chat.text.split(RULES_HEADER, 1)[1])
            self.asked.extend(listed)
            rules = [{"id": rule_id, "match": "matched", "reason": "it stands there"} for rule_id, _ in listed]
        answer = {"decision": "confirmed", "labels": [], "confidence": 0.9, "description": "seen", "rules": rules}
        return Reply(text=json.dumps(answer))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_agent_clip(tmp_path_factory.mktemp("clip"))


def openai_backend(url: str) -> OpenAIBackendConfig:
    return OpenAIBackendConfig(base_url=url, model="glm", max_retries=1, timeout_s=10)


async def test_the_cloud_asks_the_rules_words_from_its_policy_and_answers_every_rule_asked(
    tmp_path: Path, clip: Path
) -> None:
    script = RuleScript()
    mining = {**SILENT["mining"], "watch_rules": [RULE]}
    sample = make_sample(clip, busy_frames(clip)[0], "s-rules")
    sample.rule_ids.extend(["in-view", "deleted-rule"])
    async with serving(create_app(ScriptedGenerator(script), "glm", None, ServerStats())) as url:
        config = make_config(tmp_path, clip, policy={"fleet": {"mining": mining}}).model_copy(
            update={"backend": openai_backend(url)}
        )
        async with running(config) as service, channel(service) as stub:
            verdict = await stub.Infer(session_pb2.InferRequest(sample=sample, timeout_ms=10_000), timeout=WAIT_S)
            unknown = counter(service, "edgeglm_cloud_rule_answers_total", answer="not_in_policy")
            matched = counter(service, "edgeglm_cloud_rule_answers_total", answer="matched")
    assert script.asked == [("in-view", RULE["text"])]  # the policy's words, only the rule it has
    answers = [(a.rule_id, a.match, a.reason) for a in verdict.rule_answers]
    assert answers[0] == ("in-view", verdict_pb2.RULE_MATCH_MATCHED, "it stands there")
    assert answers[1][:2] == ("deleted-rule", verdict_pb2.RULE_MATCH_UNSURE)
    assert "not in the policy" in answers[1][2]
    assert (unknown, matched) == (1, 1)


async def test_a_detector_backend_answers_each_rule_unsure_and_says_why(tmp_path: Path, clip: Path) -> None:
    mining = {**SILENT["mining"], "watch_rules": [RULE]}
    sample = make_sample(clip, busy_frames(clip)[0], "s-oracle")
    sample.rule_ids.append("in-view")
    config = make_config(tmp_path, clip, policy={"fleet": {"mining": mining}})
    async with running(config) as service, channel(service) as stub:
        verdict = await stub.Infer(session_pb2.InferRequest(sample=sample, timeout_ms=10_000), timeout=WAIT_S)
    assert verdict.decision == verdict_pb2.DECISION_CONFIRMED  # the oracle still judges the object
    [answer] = verdict.rule_answers
    assert (answer.rule_id, answer.match) == ("in-view", verdict_pb2.RULE_MATCH_UNSURE)
    assert "oracle backend gave no answer" in answer.reason


async def test_a_rule_set_on_the_cloud_reaches_the_edge_and_its_match_is_an_event(
    tmp_path: Path, clip: Path, broker: MosquittoBroker | None
) -> None:
    script = RuleScript()
    async with serving(create_app(ScriptedGenerator(script), "glm", None, ServerStats())) as url:
        config = cloud_config(tmp_path, clip, SILENT, broker).model_copy(update={"backend": openai_backend(url)})
        async with running(config) as service:
            engine = service.policy
            assert engine is not None
            agent = EdgeAgent(
                edge_config(tmp_path, clip, service.port, "gw-rules", loop=True, initial=SILENT, broker=broker)
            )
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                await wait_until(lambda: agent.policy.version == engine.version_for("gw-rules"), "the first policy")
                assert counter_total(agent.metrics.mined) == 0  # silent: nothing asked before the rule
                version = await engine.set_fleet({"mining": {**SILENT["mining"], "watch_rules": [RULE]}})
                await wait_until(lambda: agent.policy.version == version, "the rule on the edge")
                await wait_until(lambda: counter_total(agent.metrics.verdicts) >= 2, "verdicts on rule questions")
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=WAIT_S * 3)
    assert script.asked and set(script.asked) == {("in-view", RULE["text"])}
    assert counter_total(agent.metrics.mined) == agent.metrics.mined.labels("watch_rule")._value.get()
    events: list[dict[str, Any]] = [
        json.loads(line) for line in (tmp_path / "gw-rules" / "events.jsonl").read_text().splitlines()
    ]
    named = [e for e in events if e["rules"]]
    assert {e["type"] for e in named} & {"new", "update"}, "a matched rule is an event"
    for event in named:  # and the track's later events (its end) still say it
        assert event["rules"] == [
            {"id": "in-view", "text": RULE["text"], "severity": "critical", "reason": "it stands there"}
        ]
