"""A real grpc.aio server on port 0 whose Session answers by a script, for faults a real cloud does not
make on demand: a stream that breaks on a given sample, a verdict sent twice or never, a wrong verdict,
a deferring Ack, a refusal. Every other sample gets an accepted Ack and the verdict its detections call
for (confirmed with detections, rejected without), of origin BACKEND.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from protos import policy_pb2, session_pb2, session_pb2_grpc, verdict_pb2


@dataclass
class Script:
    """What goes wrong, by sample_id (the first time the sample arrives, for `break_on` and `defer_once`)."""

    break_on: set[str] = field(default_factory=set)
    twice: set[str] = field(default_factory=set)
    never_answer: set[str] = field(default_factory=set)
    flip: set[str] = field(default_factory=set)
    defer_once: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)
    defer_ms: int = 200


class ScriptedCloud(session_pb2_grpc.EdgeGLMServicer):
    """The Session of `script`; records every Hello and every sample received."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.hellos: list[str] = []
        self.samples: list[str] = []
        self.heartbeats = 0

    def received(self) -> Counter[str]:
        """How often each sample_id arrived."""
        return Counter(self.samples)

    async def Session(  # noqa: N802  (the gRPC method's name)
        self, request_iterator: AsyncIterator[session_pb2.EdgeMessage], context: Any
    ) -> AsyncIterator[session_pb2.CloudMessage]:
        async for message in request_iterator:
            kind = message.WhichOneof("kind")
            if kind == "hello":
                self.hellos.append(message.hello.edge_id)
            elif kind == "heartbeat":
                self.heartbeats += 1
            elif kind == "sample":
                for answer in self._answer(message.sample):
                    yield answer
                if message.sample.sample_id in self.script.break_on:
                    self.script.break_on.discard(message.sample.sample_id)
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted break")

    async def Infer(self, request: session_pb2.InferRequest, context: Any) -> verdict_pb2.Verdict:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the scripted cloud has only Session")
        raise AssertionError("abort returns only by raising")

    async def GetPolicy(self, request: session_pb2.GetPolicyRequest, context: Any) -> policy_pb2.SignedPolicy:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the scripted cloud has only Session")
        raise AssertionError("abort returns only by raising")

    async def FetchModel(  # noqa: N802
        self, request: session_pb2.FetchModelRequest, context: Any
    ) -> AsyncIterator[session_pb2.ModelChunk]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the scripted cloud has only Session")
        yield session_pb2.ModelChunk()  # an async generator, as gRPC serves a response stream

    def _answer(self, sample: Any) -> list[session_pb2.CloudMessage]:
        script, sample_id = self.script, sample.sample_id
        self.samples.append(sample_id)
        if sample_id in script.break_on:
            return []
        if sample_id in script.refuse:
            ack = session_pb2.Ack(
                sample_id=sample_id,
                accepted=False,
                code=session_pb2.SESSION_ERROR_CODE_INVALID_MESSAGE,
                error="scripted refusal",
            )
            return [session_pb2.CloudMessage(ack=ack)]
        if sample_id in script.defer_once:
            script.defer_once.discard(sample_id)
            ack = session_pb2.Ack(
                sample_id=sample_id,
                accepted=False,
                code=session_pb2.SESSION_ERROR_CODE_OVERLOADED,
                retry_after_ms=script.defer_ms,
                error="scripted overload",
            )
            return [session_pb2.CloudMessage(ack=ack)]
        answers = [session_pb2.CloudMessage(ack=session_pb2.Ack(sample_id=sample_id, accepted=True))]
        if sample_id in script.never_answer:
            return answers
        confirmed = bool(sample.detections) != (sample_id in script.flip)
        verdict = verdict_pb2.Verdict(
            sample_id=sample_id,
            decision=verdict_pb2.DECISION_CONFIRMED if confirmed else verdict_pb2.DECISION_REJECTED,
            origin=verdict_pb2.VERDICT_ORIGIN_BACKEND,
        )
        answers += [session_pb2.CloudMessage(verdict=verdict)] * (2 if sample_id in script.twice else 1)
        return answers


@asynccontextmanager
async def scripted_cloud(script: Script) -> AsyncIterator[ScriptedCloud]:
    """The scripted Session on 127.0.0.1, a free port; stopped on exit."""
    cloud = ScriptedCloud(script)
    server = grpc.aio.server()
    session_pb2_grpc.add_EdgeGLMServicer_to_server(cloud, server)
    cloud.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield cloud
    finally:
        await server.stop(grace=None)
