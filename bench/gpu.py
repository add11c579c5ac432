"""`make gpu-check`: the world GLM on CUDA in bf16 through the `glm` backend, and the edge and reference
detectors through ONNX Runtime's CUDA provider, each at batch 1 and batched; speed-ups to
bench/results/gpu.json.

Without a CUDA device (torch sees no GPU, or this onnxruntime has no CUDAExecutionProvider) it says
which is missing and exits 0 without writing: CI and this project's machines have no GPU. A device
that is there but is not used (the backend or a session fell back to the CPU) is an error, exit 1:
that is what this check exists to catch. `--device cpu` runs the same measurements on the CPU, which
is how the tests keep this code honest on a machine without a GPU.

Figures are medians over interleaved rounds of batch 1 and batch N on the same inputs: the speed-up
of batching on that device, ms per sample, never a wall-clock target.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from bench.cloud import machine_facts
from bench.detector import camera_frames, chunks
from cloud.backends import GlmBackend, GlmBackendConfig
from common.detect import Detector, DetectorConfig
from sim.glm.evaluate import held_out_cases

MODELS = Path("sim/models")
CUDA_PROVIDER = "CUDAExecutionProvider"
console = Console(stderr=True)
app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)
Device = Literal["cuda", "cpu"]


class DeviceNotUsedError(RuntimeError):
    """A CUDA device is there but a part ran elsewhere."""


def missing_cuda() -> str | None:
    """Why this machine cannot run the check on CUDA (None: it can)."""
    import onnxruntime as ort
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(f"torch {torch.__version__} sees no CUDA device")
    if CUDA_PROVIDER not in ort.get_available_providers():
        problems.append(f"onnxruntime {ort.__version__} has no {CUDA_PROVIDER} (install onnxruntime-gpu)")
    return "; ".join(problems) or None


def _median_ms_per_item(run: Callable[[], int], rounds: int) -> float:
    """Median over `rounds` of the milliseconds per item of one `run` (which returns how many items it did)."""
    per_item = []
    for _ in range(rounds):
        started = time.perf_counter()
        items = run()
        per_item.append((time.perf_counter() - started) * 1000 / max(1, items))
    return statistics.median(per_item)


def glm_figures(model: Path, device: Device, samples: int, batch: int, rounds: int) -> dict[str, Any]:
    """The world GLM through the glm backend: ms per sample at batch 1 and `batch`, on held-out crops."""
    dtype = "bfloat16" if device == "cuda" else "float32"
    config = GlmBackendConfig(model_path=model, device=device, dtype=dtype, max_batch_size=batch)
    backend = GlmBackend(config)
    cases = [case.sample for case in held_out_cases(samples, seed=0, claim_seed=5)]

    async def per_sample_ms(size: int) -> float:
        started = time.perf_counter()
        for first in range(0, len(cases), size):
            await backend.ask(cases[first : first + size])
        return (time.perf_counter() - started) * 1000 / len(cases)

    async def measure() -> dict[str, Any]:
        await backend.start()
        try:
            if backend.device != device:
                raise DeviceNotUsedError(f"the glm backend runs on {backend.device}, not {device}")
            await per_sample_ms(batch)  # warm-up: kernels, allocator
            figures: dict[str, list[float]] = {"1": [], str(batch): []}
            for _ in range(rounds):  # interleaved, so a busy moment costs both alike
                figures["1"].append(await per_sample_ms(1))
                figures[str(batch)].append(await per_sample_ms(batch))
        finally:
            await backend.close()
        ms = {size: statistics.median(values) for size, values in figures.items()}
        return {"dtype": dtype, "samples": len(cases), "ms_per_sample": ms, "speedup": ms["1"] / ms[str(batch)]}

    return asyncio.run(measure())


def detector_figures(path: Path, device: Device, frames: Sequence[Any], batch: int, rounds: int) -> dict[str, Any]:
    """One ONNX detector: ms per frame at batch 1 and `batch`; the provider it really ran on."""
    detector = Detector(DetectorConfig(model_path=path, providers=[device]))
    wanted = CUDA_PROVIDER if device == "cuda" else "CPUExecutionProvider"
    if detector.provider != wanted:
        raise DeviceNotUsedError(f"{path.name} runs on {detector.provider}, not {wanted}")
    batch = batch if detector.frames_per_run is None else 1  # a model with a fixed batch axis takes one frame

    def one_by_one() -> int:
        for frame in frames:
            detector.detect(frame)
        return len(frames)

    def batched() -> int:
        for group in chunks(frames, batch):
            detector.detect_batch(list(group))
        return len(frames)

    batched()
    ones = [_median_ms_per_item(one_by_one, 1) for _ in range(rounds)]
    many = [_median_ms_per_item(batched, 1) for _ in range(rounds)]
    ms = {"1": statistics.median(ones), str(batch): statistics.median(many)}
    return {
        "provider": detector.provider,
        "frames": len(frames),
        "ms_per_frame": ms,
        "speedup": ms["1"] / ms[str(batch)],
    }


def device_name(device: Device) -> str:
    """The GPU's name, or the CPU's."""
    if device == "cuda":
        import torch

        return str(torch.cuda.get_device_name(0))
    return str(machine_facts().get("processor", "cpu"))


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="JSON file to write (its folder is created).")] = Path(
        "bench/results/gpu.json"
    ),
    device: Annotated[
        str, typer.Option(help="cuda (the check), or cpu (the same code on the CPU, for tests).")
    ] = "cuda",
    models: Annotated[Path, typer.Option(help="Folder with edge.onnx, reference.onnx and glm-world/.")] = MODELS,
    batch: Annotated[int, typer.Option(min=2, max=64, help="The batched size.")] = 8,
    samples: Annotated[int, typer.Option(min=1, help="Held-out test frames whose crops the GLM is asked about.")] = 12,
    frames: Annotated[int, typer.Option(min=2, help="Camera frames for the detectors.")] = 32,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Interleaved rounds per figure.")] = 3,
) -> None:
    """Measure batching on the GPU (or say plainly why there is none)."""
    if device not in ("cuda", "cpu"):
        raise typer.BadParameter(f"device must be cuda or cpu, not {device!r}")
    chosen: Device = "cuda" if device == "cuda" else "cpu"
    if chosen == "cuda":
        why = missing_cuda()
        if why is not None:
            console.print(f"gpu-check skipped: no CUDA device here ({why}); {out} is left as it is")
            return
    console.print(f"gpu-check on {chosen} ({device_name(chosen)}): the world GLM, then the detectors")
    try:
        report: dict[str, Any] = {
            "device": chosen,
            "device_name": device_name(chosen),
            "batch": batch,
            "rounds": rounds,
            "machine": machine_facts(),
            "glm": glm_figures(models / "glm-world", chosen, samples, batch, rounds),
        }
        images = camera_frames(frames)
        for name in ("edge", "reference"):
            report[name] = detector_figures(models / f"{name}.onnx", chosen, images, batch, rounds)
    except DeviceNotUsedError as err:
        console.print(f"gpu-check failed: {err}")
        raise typer.Exit(1) from err
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for part in ("glm", "edge", "reference"):
        console.print(f"{part}: batch {batch} is {report[part]['speedup']:.2f}x batch 1")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    app()
