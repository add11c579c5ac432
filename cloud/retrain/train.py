"""The fine-tune itself, run as a child process in the training environment (ultralytics).

The cloud package never imports ultralytics: its image installs none, and the training environment
(`.venv-train`) lacks the edge runtime the evaluation needs. So `train-edge` runs
`python -m sim.train.finetune tune ...` with the training environment's interpreter (`--train-python`;
in the training image both are one), offline, within one deadline, and reads back what it made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cloud.retrain.config import FineTuneSettings

RESULT_FILE = "tune-result.json"  # sim.train.finetune.RESULT_FILE: the child's answer
OFFLINE_ENVIRONMENT = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "OMP_WAIT_POLICY": "PASSIVE"}


class FineTuneError(RuntimeError):
    """The fine-tune process failed or ran out of time; the message says how and where its output is."""


@dataclass(frozen=True)
class FineTuned:
    """The child's answer: the trained weights, the exported candidate and how long each part took."""

    weights: Path
    onnx: Path
    fine_tune_s: float
    export_s: float


def tune_command(python: Path, weights: Path, data_yaml: Path, out: Path, settings: FineTuneSettings) -> list[str]:
    """The command line of the fine-tune process."""
    return [
        str(python),
        "-m",
        "sim.train.finetune",
        "tune",
        "--weights",
        str(weights),
        "--data",
        str(data_yaml),
        "--out",
        str(out),
        "--epochs",
        str(settings.epochs),
        "--imgsz",
        str(settings.imgsz),
        "--batch",
        str(settings.batch),
        "--lr0",
        str(settings.lr0),
        "--seed",
        str(settings.seed),
    ]


def run_fine_tune(
    weights: Path, data_yaml: Path, out: Path, settings: FineTuneSettings, python: Path | None = None
) -> FineTuned:
    """Fine-tune `weights` on `data_yaml` and export out/candidate.onnx, in a child process; its output
    goes to out/fine-tune.log."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)
    log = out / "fine-tune.log"
    command = tune_command(python or Path(sys.executable), weights, data_yaml, out, settings)
    environment = {**os.environ, **{key: os.environ.get(key, value) for key, value in OFFLINE_ENVIRONMENT.items()}}
    environment.setdefault("YOLO_CONFIG_DIR", str(out / "yolo-config"))
    try:
        with log.open("w") as output:
            done = subprocess.run(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
                timeout=settings.timeout_s,
                check=False,
            )
    except subprocess.TimeoutExpired as err:
        raise FineTuneError(
            f"the fine-tune ran past fine_tune.timeout_s {settings.timeout_s:.0f} s; see {log}"
        ) from err
    except OSError as err:
        raise FineTuneError(f"{command[0]}: cannot run the training environment's Python ({err.strerror})") from err
    if done.returncode != 0 or not (out / RESULT_FILE).is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise FineTuneError(
            f"the fine-tune exited with status {done.returncode} (is ultralytics in {command[0]}'s environment? "
            f"`make .venv-train/.ready`); last lines of {log}:\n{tail}"
        )
    result = json.loads((out / RESULT_FILE).read_text())
    return FineTuned(Path(result["weights"]), Path(result["onnx"]), result["fine_tune_s"], result["export_s"])
