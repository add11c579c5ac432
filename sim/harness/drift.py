"""The model loop of a drift scenario, run beside the edgeglm mode's agents while the clips play.

Once the drifting camera has played `retrain.start_at_s` seconds of its clip, the harness does what
an operator's cron job would, with the project's own commands against the running cloud:

1. `edgeglm-cloud dataset export --config cloud.yaml` (the cloud keeps every judged sample:
   `dataset.enabled`), again later while the held-out split is too small;
2. `trained`: `edgeglm-cloud train-edge` (the ultralytics fine-tune in the training environment),
   which publishes into the cloud's registry only when its promotion rule holds; `bad`: the current
   model with its class names rotated, published with `edgeglm-cloud model publish`;
3. `POST /api/rollout` to the canaries (the edges with a drifting camera unless named), then the
   cloud's rule decides: promoted after the soak, or rolled back, with no operator.

Every few seconds it also records each camera's frames read (the agents' /metrics) and each edge's
model (the cloud's /edges), so the report can place the drift and every model switch on the clips'
own timeline. Each step's outcome goes into `drift.json`; a failed step is recorded with its output
and ends the loop, the clips play on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import onnx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from common.detect import Detector, DetectorConfig
from sim.harness.run import EDGE_MODEL, ModeHooks
from sim.scenarios.drift_spec import RetrainSpec
from sim.scenarios.spec import Scenario

logger = logging.getLogger(__name__)
POLL_S = 2.0
MODEL_NAME = "edge"
LOG_FILE = "drift.json"


class LoopStepError(RuntimeError):
    """A step of the loop that did not do its work; the message says what it printed."""


@dataclass
class DriftLog:
    """What the loop saw and did, in seconds since the agents started (`t`)."""

    polls: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    rollout: dict[str, Any] = field(default_factory=dict)
    candidate_version: str = ""
    outcome: str = "not started"

    def to_json(self) -> dict[str, Any]:
        """As drift.json holds it."""
        return {
            "outcome": self.outcome,
            "candidate_version": self.candidate_version,
            "steps": self.steps,
            "rollout": self.rollout,
            "polls": self.polls,
        }


def mode_folder(out: Path) -> Path:
    """Where the edgeglm mode of a run keeps its files (as sim.harness.run.run_mode names it)."""
    return out / "modes" / "edgeglm"


def drift_hooks(scenario: Scenario, out: Path, log: DriftLog) -> ModeHooks:
    """The edgeglm mode's cloud.yaml additions (field dataset, registry, rollout) and the loop itself."""
    retrain = scenario.retrain
    assert retrain is not None
    folder = mode_folder(out)
    rollout = retrain.rollout
    sections = {
        "dataset": {"enabled": True, "path": str(folder / "cloud" / "field-dataset")},
        "models": {
            "registry": str(folder / "cloud" / "registry"),
            "rollout": {
                "soak_s": rollout.soak_s,
                "min_samples": rollout.min_samples,
                "max_rejection_increase": rollout.max_rejection_increase,
                "switch_timeout_s": rollout.switch_timeout_s,
                "check_every_s": rollout.check_every_s,
                "max_wait_s": max(600.0, scenario.duration_s),
            },
        },
    }

    async def during(admin: str, configs: dict[str, Path]) -> None:
        loop = DriftLoop(scenario, retrain, folder, admin, configs, log)
        try:
            await loop.run()
        except Exception:
            logger.exception("drift loop died")  # at once; run_mode raises it again when the agents end
            raise
        finally:
            (folder / LOG_FILE).write_text(json.dumps(log.to_json(), indent=1) + "\n")

    return ModeHooks(cloud_sections=sections, during=during)


class DriftLoop:
    """One run of the loop (module docstring)."""

    def __init__(
        self,
        scenario: Scenario,
        retrain: RetrainSpec,
        folder: Path,
        admin: str,
        configs: dict[str, Path],
        log: DriftLog,
    ) -> None:
        """Nothing runs until `run`."""
        self.scenario = scenario
        self.retrain = retrain
        self.folder = folder
        self.admin = admin
        self.log = log
        self.started = time.monotonic()
        self.polled = asyncio.Condition()  # notified after every poll
        self.health: dict[str, int] = {}
        self.fps: dict[str, float] = {}
        for edge_id, path in configs.items():
            settings = yaml.safe_load(path.read_text())
            self.health[edge_id] = int(settings["health"]["port"])
        for edge_id, group in scenario.edge_ids():
            for number, camera in enumerate(group.cameras):
                self.fps[f"{edge_id}/cam{number}"] = camera.fps
        drifting = [
            f"{edge_id}/cam{n}" for edge_id, g in scenario.edge_ids() for n, c in enumerate(g.cameras) if c.drift
        ]
        self.watched_camera = drifting[0]
        self.canaries = list(retrain.rollout.canaries) or scenario.drifting_edges()

    def now(self) -> float:
        """Seconds since the agents started."""
        return round(time.monotonic() - self.started, 1)

    async def run(self) -> None:
        """Poll all along; do the steps once the drifting camera is far enough into its clip."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            poller = asyncio.create_task(self._poll(client))
            try:
                await self._steps(client)
                await poller  # until cancelled, when the agents have finished
            finally:
                poller.cancel()

    async def _steps(self, client: httpx.AsyncClient) -> None:
        try:
            await self._until_clip(self.retrain.start_at_s)
            self.log.outcome = "collecting"
            field_dir = await self._export_enough()
            version = await (self._train(field_dir) if self.retrain.candidate == "trained" else self._publish_bad())
            if not version:
                return
            self.log.candidate_version = version
            await self._begin(client, version)
            await self._follow(client)
        except LoopStepError as err:
            self.log.outcome = f"failed: {err}"
            logger.error("drift loop: %s", err)

    def clip_second(self, camera: str) -> float:
        """How far `camera` is into its clip, by its agent's frames read at the newest poll."""
        for poll in reversed(self.log.polls):
            if camera in poll["frames"]:
                return float(poll["frames"][camera] / self.fps[camera])
        return 0.0

    async def _until_clip(self, second: float) -> None:
        async with self.polled:
            await self.polled.wait_for(lambda: self.clip_second(self.watched_camera) >= second)

    def _step(self, name: str, began: float, ok: bool, detail: str, **extra: Any) -> None:
        entry = {
            "step": name,
            "t": self.now(),
            "clip_s": round(self.clip_second(self.watched_camera), 1),
            "wall_s": round(time.monotonic() - began, 1),
            "ok": ok,
            "detail": detail,
            **extra,
        }
        self.log.steps.append(entry)
        logger.info("drift loop: %s", entry)

    async def _command(self, name: str, args: list[str], deadline_s: float) -> str:
        """`python -m cloud <args>`, its output kept in logs/<name>.log; LoopStepError on a non-zero exit."""
        began = time.monotonic()
        log_path = self.folder / "logs" / f"{name}.log"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cloud", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            async with asyncio.timeout(deadline_s):
                output, _ = await process.communicate()
        except TimeoutError as err:
            process.kill()
            await process.wait()
            raise LoopStepError(f"{name}: no result within {deadline_s:.0f} s (see {log_path})") from err
        text = output.decode(errors="replace")
        log_path.write_text(text)
        said = [line for line in text.strip().splitlines() if line.strip() and "━" not in line]  # no progress bars
        last = said[-3:]
        if process.returncode != 0:
            self._step(name, began, False, " / ".join(last), exit=process.returncode)
            raise LoopStepError(f"{name} exited with {process.returncode}: {' / '.join(last)} (see {log_path})")
        self._step(name, began, True, " / ".join(last))
        return text

    async def _export_enough(self) -> Path:
        """Export until the held-out split has min_field_images images (or give up)."""
        classes = Detector(DetectorConfig(model_path=EDGE_MODEL)).names
        names = ",".join(classes[i] for i in sorted(classes))
        attempt = 0
        while True:
            attempt += 1
            out = self.folder / "retrain" / f"field-{attempt}"
            args = ["dataset", "export", "--config", str(self.folder / "config" / "cloud.yaml"), "--out", str(out)]
            args += ["--classes", names, "--val-share", str(self.retrain.val_share)]
            await self._command(f"export-{attempt}", [*args, "--group-s", str(self.retrain.group_s)], 600.0)
            report = json.loads((out / "report.json").read_text())
            if report["images"]["val"] >= self.retrain.min_field_images or self.retrain.candidate == "bad":
                return out
            if self.clip_second(self.watched_camera) + 20 > self.retrain.give_up_at_s:
                raise LoopStepError(
                    f"only {report['images']['val']} held-out field images by clip second "
                    f"{self.clip_second(self.watched_camera):.0f} (min_field_images {self.retrain.min_field_images})"
                )
            await self._until_clip(self.clip_second(self.watched_camera) + 20)

    async def _train(self, field_dir: Path) -> str:
        """train-edge on the export; the published version, or '' when its rule did not promote the candidate."""
        version = "ft-1"
        run = self.folder / "retrain" / "train-edge"
        args = ["train-edge", "--field", str(field_dir), "--out", str(run), "--weights", str(self.retrain.weights)]
        args += ["--current", str(EDGE_MODEL), "--current-version", f"world-seed{self.scenario.seed}"]
        args += ["--base", str(self.retrain.base), "--config", str(self.folder / "config" / "cloud.yaml")]
        args += ["--version", version, "--train-python", str(self.retrain.train_python)]
        args += ["--epochs", str(self.retrain.epochs), "--base-images", str(self.retrain.base_images)]
        args += ["--field-repeat", str(self.retrain.field_repeat)]
        args += ["--min-field-images", str(self.retrain.min_field_images)]
        if self.retrain.lr0 is not None:
            args += ["--lr0", str(self.retrain.lr0)]
        if self.retrain.max_base_drop is not None:
            args += ["--max-base-drop", str(self.retrain.max_base_drop)]
        self.log.outcome = "training"
        await self._command("train-edge", args, self.retrain.train_timeout_s)
        report = json.loads((run / "report.json").read_text())
        if not report.get("published"):
            self.log.outcome = "not promoted: " + "; ".join(report["decision"]["reasons"])
            return ""
        return version

    async def _publish_bad(self) -> str:
        """The deliberately bad candidate, published without the promotion rule."""
        version = "bad-1"
        path = rotated_classes(EDGE_MODEL, self.folder / "retrain" / "bad-candidate.onnx")
        args = ["model", "publish", str(path), "--version", version, "--name", MODEL_NAME]
        args += ["--parent", f"world-seed{self.scenario.seed}", "--config", str(self.folder / "config" / "cloud.yaml")]
        await self._command("publish-bad", args, 300.0)
        return version

    async def _begin(self, client: httpx.AsyncClient, version: str) -> None:
        began = time.monotonic()
        body = {"name": MODEL_NAME, "version": version, "canaries": self.canaries}
        response = await client.post(f"{self.admin}/api/rollout", json=body)
        if response.status_code != 201:
            self._step("rollout", began, False, f"HTTP {response.status_code}: {response.text[:300]}")
            raise LoopStepError(f"POST /api/rollout: HTTP {response.status_code}: {response.text[:300]}")
        self._step("rollout", began, True, f"canaries {', '.join(self.canaries)} get {version}")
        self.log.outcome = "canary"

    async def _follow(self, client: httpx.AsyncClient) -> None:
        """Until the cloud's rule has promoted or rolled back the rollout."""
        while True:
            try:
                state = (await client.get(f"{self.admin}/api/rollout")).json()
            except (httpx.HTTPError, ValueError):
                await asyncio.sleep(POLL_S)
                continue
            self.log.rollout = state
            stage = (state.get("rollout") or {}).get("stage", "")
            self.log.outcome = stage or self.log.outcome
            if stage in ("promoted", "rolled_back", "paused"):
                history = state["rollout"]["history"]
                self._step(stage, time.monotonic(), True, str(history[-1]["why"]) if history else "")
                return
            await asyncio.sleep(POLL_S)

    async def _poll(self, client: httpx.AsyncClient) -> None:
        """Each camera's frames read and each edge's model, every POLL_S, until cancelled."""
        while True:
            poll: dict[str, Any] = {"t": self.now(), "frames": {}, "models": {}}
            for edge_id, port in self.health.items():
                try:
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.HTTPError:
                    continue  # starting or finished; the next poll sees it
                for camera, count in frames_read(text).items():
                    poll["frames"][f"{edge_id}/{camera}"] = count
            try:
                for record in (await client.get(f"{self.admin}/edges")).json():
                    poll["models"][record["edge_id"]] = record.get("model_version", "")
            except (httpx.HTTPError, ValueError, TypeError):
                pass  # the cloud answers the next poll
            self.log.polls.append(poll)
            async with self.polled:
                self.polled.notify_all()
            await asyncio.sleep(POLL_S)


def frames_read(metrics_text: str) -> dict[str, int]:
    """edgeglm_edge_frames_read per camera from an agent's /metrics."""
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "edgeglm_edge_frames_read_total":
                counts[sample.labels["camera"]] = int(sample.value)
    return counts


def rotated_classes(model: Path, out: Path) -> Path:
    """`model` with every class id named as the next one (person -> cat, ...): the boxes are where they were,
    the labels wrong, as a fine-tune on consistently shuffled labels would learn."""
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == "names":
            names = yaml.safe_load(prop.value)
            ids = sorted(names)
            prop.value = str({index: names[ids[(n + 1) % len(ids)]] for n, index in enumerate(ids)})
            break
    else:
        raise ValueError(f"{model}: no names in its metadata")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out
