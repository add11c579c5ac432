"""The mined reasons' names are the proto enum's, every one of them, and each side reads the same list."""

from __future__ import annotations

from typing import get_args

from cloud import convert as cloud_convert
from edge import convert as edge_convert
from edge.mine import base
from protos import sample_pb2
from protos.reasons import MINED_REASONS, MINED_REASONS_FROM_PB, MinedReasonName


def test_every_mined_reason_of_the_proto_has_its_name_and_back():
    wire = {v: k for k, v in sample_pb2.MinedReason.items() if v != sample_pb2.MINED_REASON_UNSPECIFIED}
    assert {pb: wire[pb].removeprefix("MINED_REASON_").lower() for pb in wire} == MINED_REASONS_FROM_PB
    assert set(get_args(MinedReasonName)) == set(MINED_REASONS)


def test_edge_and_cloud_read_the_one_list():
    assert vars(edge_convert)["MINED_REASONS"] is MINED_REASONS
    assert vars(cloud_convert)["MINED_REASONS"] is MINED_REASONS
    assert vars(base)["MinedReasonName"] is MinedReasonName
