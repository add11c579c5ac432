"""Requests protobuf cannot parse, handed to the servicer instead of failing inside gRPC (see grpc_server)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from google.protobuf.message import DecodeError


class _Parsable(Protocol):
    @classmethod
    def FromString(cls, data: bytes) -> object: ...  # noqa: N802  (protobuf's name)


M = TypeVar("M", bound=_Parsable)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request message refused before parsing: too large, or bytes protobuf refused; how many and why."""

    message: str
    size: int
    error: str
    reason: Literal["undecodable", "oversized"] = "undecodable"

    def describe(self) -> str:
        """What was wrong, for a status detail or a SessionError an operator can act on."""
        if self.reason == "oversized":
            return f"a {self.message} of {self.size} bytes is larger than {self.error}; it was ignored"
        return f"a {self.message} of {self.size} bytes could not be parsed ({self.error}); it was ignored"


def lenient(message_type: type[M], max_bytes: int | None = None) -> Callable[[bytes], M | Undecodable]:
    """A gRPC request deserializer that returns an Undecodable where `message_type.FromString` raises, or
    where the message is larger than `max_bytes` (not parsed at all)."""
    name = message_type.__name__

    def parse(data: bytes) -> M | Undecodable:
        if max_bytes is not None and len(data) > max_bytes:
            return Undecodable(name, len(data), f"the {max_bytes} accepted", "oversized")
        try:
            return message_type.FromString(data)  # type: ignore[return-value]
        except (DecodeError, ValueError, RecursionError) as err:
            return Undecodable(name, len(data), str(err) or type(err).__name__)

    return parse
