"""Choosing ONNX Runtime execution providers from the config's preference list."""

from __future__ import annotations

from collections.abc import Sequence

from common.detect.config import ProviderName

EXECUTION_PROVIDERS: dict[ProviderName, str] = {
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
CPU_PROVIDER = "CPUExecutionProvider"


def session_providers(requested: Sequence[ProviderName], available: Sequence[str]) -> list[str]:
    """The provider list for the session: requested ones this build has, in order, then CPU.

    CPU always closes the list, whatever was asked: an edge gateway that cannot use its accelerator
    should still detect, slower, rather than not start.
    """
    chosen: list[str] = []
    for name in requested:
        provider = EXECUTION_PROVIDERS[name]
        if provider in available and provider not in chosen:
            chosen.append(provider)
    if CPU_PROVIDER not in chosen:
        chosen.append(CPU_PROVIDER)
    return chosen


def fallback_message(
    model: str, requested: Sequence[ProviderName], available: Sequence[str], picked: str
) -> str | None:
    """A one-line explanation when the session does not run on the preferred provider, else None."""
    preferred = EXECUTION_PROVIDERS[requested[0]]
    if picked == preferred:
        return None
    reason = "is not available in" if preferred not in available else "failed to start with"
    return (
        f"{model}: execution provider {requested[0]!r} ({preferred}) {reason} this onnxruntime build; "
        f"asked for {list(requested)}, available {list(available)}; falling back to {picked}"
    )
