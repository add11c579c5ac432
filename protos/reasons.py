"""The mined reasons of `protos/sample.proto` by name: the one list the edge and the cloud both read.

A name is the enum value's own, lower-case and without its prefix (MINED_REASON_WATCH_RULE is
"watch_rule"); tests/unit/test_protos_reasons.py holds the list to the proto.
"""

from __future__ import annotations

from typing import Literal

from protos import sample_pb2

MinedReasonName = Literal[
    "uncertainty_band",
    "ibt",
    "cross_entropy",
    "watch_list",
    "watch_rule",
    "motion_without_detection",
    "random_audit",
]
"""Why a frame or object was mined; one to one with protos' MinedReason (MINED_REASON_<UPPER>)."""

MINED_REASONS: dict[MinedReasonName, sample_pb2.MinedReason.ValueType] = {
    "uncertainty_band": sample_pb2.MINED_REASON_UNCERTAINTY_BAND,
    "ibt": sample_pb2.MINED_REASON_IBT,
    "cross_entropy": sample_pb2.MINED_REASON_CROSS_ENTROPY,
    "watch_list": sample_pb2.MINED_REASON_WATCH_LIST,
    "watch_rule": sample_pb2.MINED_REASON_WATCH_RULE,
    "motion_without_detection": sample_pb2.MINED_REASON_MOTION_WITHOUT_DETECTION,
    "random_audit": sample_pb2.MINED_REASON_RANDOM_AUDIT,
}
MINED_REASONS_FROM_PB: dict[int, MinedReasonName] = {pb: name for name, pb in MINED_REASONS.items()}
