"""Watch rules in plain words on the cloud's side: what a sample asks, and that every rule it asks is answered.

A sample names rules by id (`Sample.rule_ids`); the text the model is asked is the one in the policy
the cloud signed for that edge (`PolicyEngine.effective`), never words the sample brings: an edge
cannot make the cloud's model answer questions its operator did not write. A rule the policy does not
have (deleted since the edge asked, or never there) is answered `unsure`, with why, and counted.

The verdict answers every rule the sample asked, in its order (verdict.proto's promise): what the
backend answered for a rule it was asked, else `unsure` saying the backend gave no answer. A
detector-like backend (onnx, oracle) answers none; the language-model backends (glm, openai) ask
the model each rule with the sample's question.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from cloud.convert import BackendResult, RuleAnswer, RuleQuestion, SampleInput
from protos.policy_settings import WatchRule

RuleLookup = Callable[[str], Sequence[WatchRule]]
"""An edge's watch rules, as the policy in force for it has them (edge id -> rules)."""

NOT_IN_POLICY = "not in the policy the cloud signed for this edge and camera"


def with_rules(sample: SampleInput, lookup: RuleLookup | None) -> tuple[SampleInput, list[str]]:
    """`sample` with the rules it asks worded as its edge's policy words them, and the ids the policy lacks."""
    if not sample.rule_ids:
        return sample, []
    known = {
        rule.rule_id: rule
        for rule in (lookup(sample.edge_id) if lookup is not None else ())
        if rule.watches(sample.camera_id)
    }
    questions = tuple(RuleQuestion(i, known[i].text) for i in sample.rule_ids if i in known)
    unknown = [i for i in sample.rule_ids if i not in known]
    return dataclasses.replace(sample, rules=questions), unknown


def answered(sample: SampleInput, result: BackendResult, backend: str) -> BackendResult:
    """`result` answering every rule `sample` asked, in its order (see the module's docstring)."""
    if not sample.rule_ids:
        return dataclasses.replace(result, rule_answers=()) if result.rule_answers else result
    asked = {question.rule_id for question in sample.rules}
    given = {answer.rule_id: answer for answer in result.rule_answers if answer.rule_id in asked}
    answers = []
    for rule_id in sample.rule_ids:
        if rule_id not in asked:
            answers.append(RuleAnswer(rule_id, "unsure", NOT_IN_POLICY))
        elif rule_id in given:
            answers.append(given[rule_id])
        else:
            answers.append(RuleAnswer(rule_id, "unsure", f"the {backend} backend gave no answer to this rule"))
    return dataclasses.replace(result, rule_answers=tuple(answers))
