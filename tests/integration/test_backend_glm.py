"""The glm backend on real GLM-4V models: a tiny random one built here, and the committed world GLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from typer.testing import CliRunner

from cloud.backends import BackendConfig, BackendStartError, GlmBackend, GlmBackendConfig, build_backend
from cloud.cli import app as cloud_app
from cloud.convert import CloudDetection, SampleInput
from cloud.metrics import CloudMetrics
from sim.glm.evaluate import EvalCase, held_out_cases, world_sample
from sim.world.dataset import DatasetSpec, render_dataset_image
from sim.world.photos import CLASSES
from tests.helpers.glm_models import WORLD_GLM, agreement_bound, save_random_glm

# torch on every core, under deadlines sized for one model at a time (tests/conftest.py).
pytestmark = pytest.mark.one_at_a_time("glm")

# Test-split frames whose crops the world GLM is asked about here (a fixed, seeded set).
AGREEMENT_FRAMES = 12
# Test-split frames whose objects are asked about as whole-frame samples.
FULL_FRAMES = 30


def counted(metrics: CloudMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def image_sample(image: np.ndarray, sample_id: str, label: str = "cat") -> SampleInput:
    height, width = image.shape[:2]
    detection = CloudDetection(label, 1, 0.5, (0.0, 0.0, float(max(width, 1)), float(max(height, 1))))
    return SampleInput(
        sample_id=sample_id,
        edge_id="e1",
        camera_id="c1",
        frame_seq=0,
        captured_at=0.0,
        image=image,
        crop=None,
        frame_size=(max(width, 1), max(height, 1)),
        detections=(detection,),
        mined_reason="uncertainty_band",
        priority=0.5,
        trace_id="",
    )


@pytest.fixture(scope="module")
def random_glm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GLM-4V with random weights (the world GLM's shape), its tokenizer and image processor, saved."""
    return save_random_glm(tmp_path_factory.mktemp("random-glm"))


@pytest.fixture(scope="module")
def world_cases() -> list[EvalCase]:
    return held_out_cases(AGREEMENT_FRAMES, seed=0, claim_seed=42)


async def test_random_weights_answer_nonsense_that_becomes_unsure_and_is_counted(random_glm: Path) -> None:
    metrics = CloudMetrics()
    backend = build_backend(GlmBackendConfig(model_path=random_glm, max_new_tokens=16, max_batch_size=4), metrics)
    assert isinstance(backend, GlmBackend)
    rng = np.random.default_rng(0)
    batch = [image_sample(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), f"s{h}") for h, w in ((90, 60), (200, 300))]
    await backend.start()
    try:
        results = await backend.infer(batch)
        assert backend.device == "cpu"
        assert backend.model_version.startswith("sha256:")
    finally:
        await backend.close()
    assert [r.decision for r in results] == ["unsure", "unsure"]
    assert all(r.text.startswith("unparsable answer:") and r.detections == [] for r in results)
    assert counted(metrics, "edgeglm_cloud_backend_unparsable_answers_total", backend="glm") == 2


async def test_an_image_the_model_cannot_take_is_unsure_alone(random_glm: Path) -> None:
    metrics = CloudMetrics()
    backend = GlmBackend(GlmBackendConfig(model_path=random_glm, max_new_tokens=8), metrics)
    await backend.start()
    try:
        empty = np.zeros((0, 5, 3), np.uint8)
        results = await backend.infer(
            [
                image_sample(np.zeros((1, 1, 3), np.uint8), "tiny"),
                image_sample(empty, "empty"),
                image_sample(np.full((64, 64, 3), 128, np.uint8), "fine"),
            ]
        )
    finally:
        await backend.close()
    assert [r.decision for r in results] == ["unsure", "unsure", "unsure"]
    assert "1x1 pixels" in results[0].text and "tiny" in results[0].text
    assert "empty" in results[1].text
    assert results[2].text.startswith("unparsable answer:")  # judged (random weights), not refused
    assert counted(metrics, "edgeglm_cloud_backend_errors_total", backend="glm", kind="bad_image") == 2
    assert counted(metrics, "edgeglm_cloud_backend_unparsable_answers_total", backend="glm") == 1


async def test_a_missing_model_folder_or_file_is_named_at_start(tmp_path: Path, random_glm: Path) -> None:
    with pytest.raises(BackendStartError, match=r"model_path .*nowhere does not exist .*make train-glm"):
        await GlmBackend(GlmBackendConfig(model_path=tmp_path / "nowhere")).start()
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json"):
        (partial / name).write_bytes((random_glm / name).read_bytes())
    with pytest.raises(BackendStartError, match=r"partial/model\.safetensors is missing"):
        await GlmBackend(GlmBackendConfig(model_path=partial)).start()


def test_config_is_a_backend_kind_with_bounds() -> None:
    adapter: TypeAdapter[BackendConfig] = TypeAdapter(BackendConfig)
    config = adapter.validate_python({"kind": "glm", "model_path": "m"})
    assert isinstance(config, GlmBackendConfig)
    assert (config.device, config.dtype, config.temperature, config.image_size) == ("auto", "auto", 0.0, 112)
    assert config.focus == "claims"
    with pytest.raises(ValidationError, match="not a multiple of 28"):
        GlmBackendConfig(model_path=Path("m"), image_size=100)
    with pytest.raises(ValidationError, match="cannot be filled"):
        GlmBackendConfig(model_path=Path("m"), prompt_template="{detections} {edge}")
    with pytest.raises(ValidationError, match="model_path"):
        adapter.validate_python({"kind": "glm"})


def test_check_config_refuses_a_model_path_that_does_not_exist(tmp_path: Path, random_glm: Path) -> None:
    missing = tmp_path / "cloud.yaml"
    missing.write_text("backend: {kind: glm, model_path: models/none}\n")
    present = tmp_path / "ok.yaml"
    present.write_text(f"backend: {{kind: glm, model_path: {random_glm}}}\n")
    bad = CliRunner().invoke(cloud_app, ["check-config", str(missing)])
    good = CliRunner().invoke(cloud_app, ["check-config", str(present)])
    assert bad.exit_code == 1
    assert f"cloud.yaml: backend.model_path: {tmp_path / 'models' / 'none'} does not exist" in bad.stderr
    assert "make train-glm" in bad.stderr
    assert good.exit_code == 0 and "backend glm" in good.stdout


@pytest.mark.slow
async def test_world_glm_verdicts_agree_with_ground_truth_as_reported(world_cases: list[EvalCase]) -> None:
    reported = json.loads((WORLD_GLM / "eval.json").read_text())["held_out"]["decision_accuracy"]
    metrics = CloudMetrics()
    backend = GlmBackend(GlmBackendConfig(model_path=WORLD_GLM, max_batch_size=8), metrics)
    await backend.start()
    try:
        results = []
        for first in range(0, len(world_cases), 8):
            results += await backend.infer([case.sample for case in world_cases[first : first + 8]])
    finally:
        await backend.close()
    agree = sum(r.decision == case.truth.decision for r, case in zip(results, world_cases, strict=True))
    assert len(world_cases) >= 15
    assert agree / len(world_cases) >= agreement_bound(reported, len(world_cases))
    confirmed = [(r, c) for r, c in zip(results, world_cases, strict=True) if r.decision == "confirmed"]
    assert confirmed, "no sample was confirmed"
    for result, case in confirmed:  # boxes are the edge's, for the labels the model saw
        assert all(d in case.sample.detections for d in result.detections)


def full_frame_samples(frames: int) -> list[SampleInput]:
    """One whole-frame sample per clearly visible object of test-split frames, claiming its true label and box."""
    spec = DatasetSpec(seed=0)
    samples = []
    for index in range(frames):
        scene = render_dataset_image(spec, "test", index)
        for number, obj in enumerate(scene.objects):
            if obj.small or obj.occluded:
                continue
            claim = CloudDetection(obj.label, CLASSES.index(obj.label), 0.5, obj.box)
            samples.append(world_sample(scene.image, (claim,), f"frame{index}-{number}", index))
    return samples


@pytest.mark.slow
async def test_world_glm_confirms_a_true_claim_on_a_whole_frame_by_looking_at_the_claim() -> None:
    """A 640x480 frame squeezed to 112 pixels hides the object; the focus on the claimed box shows it."""
    reported = json.loads((WORLD_GLM / "eval.json").read_text())["held_out"]["decision_accuracy_by_claim"]["right"]
    samples = full_frame_samples(FULL_FRAMES)
    backend = GlmBackend(GlmBackendConfig(model_path=WORLD_GLM, max_batch_size=8))
    await backend.start()
    try:
        results = []
        for first in range(0, len(samples), 8):
            results += await backend.infer(samples[first : first + 8])
    finally:
        await backend.close()
    confirmed = sum(r.decision == "confirmed" for r in results)
    assert len(samples) >= 30
    assert confirmed / len(samples) >= agreement_bound(reported, len(samples))


def test_the_glm_example_config_selects_the_world_glm() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "cloud.glm.example.yaml"
    result = CliRunner().invoke(cloud_app, ["check-config", str(example)])
    assert result.exit_code == 0, result.stderr
    assert "backend glm" in result.stdout


async def test_the_judge_report_compares_the_edge_and_the_world_glm_on_the_edges_detections() -> None:
    from sim.glm.judge import MODELS, judge

    report = await judge(MODELS / "edge.onnx", WORLD_GLM, frames=12, batch_size=8)
    assert set(report["subsets"]) == {"hard", "all"}
    everything = report["subsets"]["all"]
    assert everything["edge"]["samples"] == everything["glm"]["samples"] > 0
    assert report["subsets"]["hard"]["edge"]["samples"] <= everything["edge"]["samples"]
    for subset in report["subsets"].values():
        for decider in ("edge", "glm"):
            assert all(0.0 <= subset[decider][k] <= 1.0 for k in ("accuracy", "precision", "recall"))
