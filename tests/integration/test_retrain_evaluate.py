"""`train-edge` without its fine-tune: real ONNX detectors scored on a real field export and the world's
test split, the promotion rule applied, and a promoted candidate published signed into the registry.

The field export is made the way the cloud makes it: world frames (another seed than the base set)
kept as `FieldRecord`s with their true objects as the cloud's labels (what the oracle backend
answers), in a folder image store, exported by `export_yolo`. A worse candidate needs no ultralytics:
the committed edge model with noise on its convolution weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from cloud.cli import app as cloud_app
from cloud.dataset import export_yolo
from cloud.dataset.images import FolderImages
from cloud.dataset.store import FieldRecord, Labelled, image_file
from cloud.models.registry import ModelRegistry
from cloud.models.rollout import Rollout
from cloud.policy.signing import load_private_key, write_keypair
from cloud.retrain import RetrainConfig
from cloud.retrain.evaluate import RetrainDataError, compare
from cloud.retrain.run import (
    Candidate,
    Publisher,
    check_held_out,
    current_model,
    judge_and_publish,
    keep_weights,
    start_weights,
)
from common.manifest import describe_model, read_manifest
from sim.world.dataset import DatasetSpec, read_metadata, write_dataset
from sim.world.photos import CLASSES

MODELS = Path(__file__).resolve().parents[2] / "sim" / "models"
EDGE, REFERENCE = MODELS / "edge.onnx", MODELS / "reference.onnx"
FIELD_FRAMES = 30
BASE_TEST_IMAGES = 24
runner = CliRunner()


def field_export(out: Path, scratch: Path, seed: int, classes: list[str]) -> Path:
    """World frames of `seed` as judged field records, exported as the cloud exports its dataset."""
    world = scratch / "world"
    write_dataset(DatasetSpec(seed=seed, train=0, val=0, test=FIELD_FRAMES), world, splits=("test",))
    images = FolderImages(scratch / "images")
    records = []
    for index, meta in enumerate(read_metadata(world, "test")):
        objects = meta["objects"]
        assert isinstance(objects, list)
        record = FieldRecord(
            edge_id="gw-lobby-01",
            sample_id=f"sample-{index}",
            camera_id="cam-1",
            frame_seq=index,
            captured_at=1_000.0 + 120.0 * index,  # two minutes apart: each frame its own group
            track_id="",
            mined_reason="uncertain",
            decision="confirmed" if objects else "rejected",
            confidence=0.9,
            cloud=tuple(Labelled(o["label"], tuple(o["box"])) for o in objects),
            edge=(),
            width=640,
            height=480,
            crop=None,
            frame_size=(640, 480),
            backend="oracle",
            model="world",
            edge_model="edge world-2026-11",
        )
        name = image_file(record.edge_id, record.sample_id)
        images.put(name, (world / "images" / "test" / f"{meta['image']}.jpg").read_bytes())
        records.append((record, name))
    export_yolo(records, images, out, classes, val_share=0.5, group_s=60.0)
    return out


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A field export in the edge model's classes, about half of it held out (val)."""
    return field_export(tmp_path_factory.mktemp("field"), tmp_path_factory.mktemp("scratch"), 7, list(CLASSES))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first images of the world's (seed 0) training and test splits: the same images as the full set's."""
    folder = tmp_path_factory.mktemp("world")
    write_dataset(DatasetSpec(seed=0, train=8, val=0, test=BASE_TEST_IMAGES), folder, splits=("train", "test"))
    return folder


@pytest.fixture(scope="module")
def degraded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edge model with noise (0.3 of each tensor's spread) on every convolution weight: it still runs,
    and finds almost nothing."""
    model = onnx.load(str(EDGE))
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        weights = numpy_helper.to_array(tensor)
        if weights.dtype == np.float32 and weights.ndim == 4:
            noisy = weights + rng.normal(0.0, 0.3 * float(weights.std()), weights.shape)
            tensor.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), tensor.name))
    path = tmp_path_factory.mktemp("degraded") / "degraded.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    """The cloud's policy signing key, made as `edgeglm-cloud keygen` makes it."""
    private_path, _ = write_keypair(tmp_path / "keys")
    return private_path


def held_out_images(field: Path) -> int:
    return len(list((field / "images" / "val").glob("*.jpg")))


def test_the_field_export_holds_out_part_of_the_frames(field: Path) -> None:
    held_out = held_out_images(field)
    assert 0 < held_out < FIELD_FRAMES
    assert held_out + len(list((field / "images" / "train").glob("*.jpg"))) == FIELD_FRAMES


@pytest.mark.slow
def test_both_real_models_are_scored_on_the_same_held_out_field_images_and_base_images(
    field: Path, base: Path, tmp_path: Path
) -> None:
    compared = compare(EDGE, REFERENCE, field, base, RetrainConfig(), tmp_path)
    for evaluation in (compared.current_field, compared.candidate_field):
        assert evaluation.split == "val"
        assert evaluation.images == held_out_images(field)
        assert "subsets" not in evaluation.detail  # field frames carry no world metadata
    for evaluation in (compared.current_base, compared.candidate_base):
        assert evaluation.split == "test"
        assert evaluation.images == BASE_TEST_IMAGES
        assert {"hard", "easy"} <= set(evaluation.detail["subsets"])
    for evaluation in (
        compared.current_field,
        compared.candidate_field,
        compared.current_base,
        compared.candidate_base,
    ):
        assert evaluation.map50 is not None and evaluation.map50_95 is not None
        assert 0.3 < evaluation.map50 <= 1.0
        assert 0.0 < evaluation.map50_95 <= evaluation.map50
        assert set(evaluation.detail["per_class"]) <= set(CLASSES)
    assert compared.current_field.model == str(EDGE)
    assert compared.candidate_base.model == str(REFERENCE)


def candidate(path: Path) -> Candidate:
    """A candidate that was not trained here: its training summary says so."""
    return Candidate(path, {"field_images": 0, "note": "not trained (test)"}, {})


@pytest.mark.slow
def test_a_worse_candidate_is_refused_and_nothing_is_published(
    field: Path, base: Path, degraded: Path, signing_key: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    publisher = Publisher(registry, load_private_key(signing_key), "edge", "v2")
    current = current_model(EDGE, "v1", None, "edge")
    report = judge_and_publish(current, candidate(degraded), field, base, RetrainConfig(), tmp_path, publisher)
    assert not report.decision.promote
    assert [reason.split(":")[0] for reason in report.decision.reasons] == [
        "not better on the field split",
        "worse on the base split beyond the bound",
    ]
    assert report.published is None
    assert registry.list() == []
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["decision"]["promote"] is False
    assert written["evaluations"]["base"]["candidate"]["map50"] < written["evaluations"]["base"]["current"]["map50"]
    assert "**not promoted**" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_a_better_candidate_is_published_signed_with_its_parent_metrics_and_training(
    field: Path, base: Path, degraded: Path, signing_key: Path, tmp_path: Path
) -> None:
    key = load_private_key(signing_key)
    registry = ModelRegistry(tmp_path / "registry")
    # The fleet runs the degraded model, published as v1 and promoted; the committed edge model is the candidate.
    v1 = registry.publish(
        degraded, describe_model(degraded, name="edge", version="v1", created_at="2026-12-01T00:00:00"), key
    )
    promoted = Rollout(
        model=v1.ref(), previous=None, canaries=["gw-1"], baseline_versions=[""], started_at=0.0, stage="promoted"
    )
    (registry.root / "rollout.json").write_text(promoted.model_dump_json())
    # Published later, never promoted: not what the fleet runs.
    registry.publish(EDGE, describe_model(EDGE, name="edge", version="v1-late", created_at="2026-12-02T00:00:00"), key)
    current = current_model(None, "", registry, "edge")
    assert (current.version, current.path) == ("v1", registry.get("edge", "v1").path)

    report = judge_and_publish(
        current, candidate(EDGE), field, base, RetrainConfig(), tmp_path, Publisher(registry, key, "edge", "v2")
    )
    assert report.decision.promote, report.decision.reasons
    published = registry.get("edge", "v2")
    manifest = read_manifest(published.path.parent / "manifest.json").verify(key.public_key())
    assert manifest.parent == "v1"
    assert manifest.sha256 == describe_model(EDGE, name="edge", version="v2").sha256
    assert published.path.read_bytes() == EDGE.read_bytes()
    assert manifest.classes == list(CLASSES)
    assert manifest.input_size == (320, 320)
    assert manifest.training == {"field_images": 0, "note": "not trained (test)"}
    metrics = manifest.metrics
    field_candidate, field_current = metrics["field_candidate"], metrics["field_current"]
    assert isinstance(field_candidate, dict) and isinstance(field_current, dict)
    assert field_candidate["images"] == held_out_images(field)
    assert metrics["field_gain"] == report.decision.field_gain
    assert report.published is not None and report.published["uri"] == "edgeglm://edge/v2"
    assert json.loads((tmp_path / "report.json").read_text())["published"]["sha256"] == manifest.sha256


def test_a_field_export_in_another_class_order_is_refused_before_training(tmp_path: Path) -> None:
    shuffled = [*CLASSES[1:], CLASSES[0]]
    exported = field_export(tmp_path / "field", tmp_path / "scratch", 7, shuffled)
    with pytest.raises(RetrainDataError, match=r"not the edge model's .* export again with --classes person,cat"):
        check_held_out(exported, current_model(EDGE, "", None, "edge"), RetrainConfig())


def test_train_edge_stops_with_the_reason_when_the_training_environment_fails(
    field: Path, base: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "edge.pt"
    weights.write_bytes(b"not used: the training Python fails first")
    args = ["train-edge", "--field", str(field), "--out", str(tmp_path / "run"), "--weights", str(weights)]
    args += ["--current", str(EDGE), "--base", str(base), "--no-publish", "--train-python", "/bin/false"]
    result = runner.invoke(cloud_app, args)
    assert result.exit_code == 1, result.output
    assert "the fine-tune exited with status 1" in result.output
    assert (tmp_path / "run" / "mix" / "data.yaml").is_file()
    assert not (tmp_path / "run" / "report.json").exists()


def test_train_edge_refuses_to_start_without_starting_weights(field: Path, base: Path, tmp_path: Path) -> None:
    args = ["train-edge", "--field", str(field), "--out", str(tmp_path / "run"), "--weights", str(tmp_path / "no.pt")]
    result = runner.invoke(cloud_app, [*args, "--current", str(EDGE), "--base", str(base), "--no-publish"])
    assert result.exit_code == 1
    assert "no starting weights; make them with `make edge-weights` or give --weights" in result.output


def test_train_edge_refuses_to_publish_without_a_signing_key(field: Path, base: Path, tmp_path: Path) -> None:
    args = ["train-edge", "--field", str(field), "--out", str(tmp_path / "run"), "--current", str(EDGE)]
    result = runner.invoke(cloud_app, [*args, "--base", str(base), "--registry", str(tmp_path / "registry")])
    assert result.exit_code == 1
    assert "publishing needs the cloud's signing key" in result.output


def test_the_degraded_model_is_still_a_detector_the_edge_runtime_loads(degraded: Path) -> None:
    # The refusal above is the rule's, not the runtime's: the degraded file loads and describes.
    assert describe_model(degraded, name="edge", version="x").classes == list(CLASSES)


def test_the_next_fine_tune_starts_from_the_weights_a_promotion_kept(tmp_path: Path) -> None:
    shipped = tmp_path / "edge.pt"
    shipped.write_bytes(b"the image's weights")
    trained = tmp_path / "run" / "last.pt"
    trained.parent.mkdir()
    trained.write_bytes(b"the promoted candidate's weights")
    kept_dir = tmp_path / "weights"
    first = current_model(EDGE, "world-2026-11", None, "edge")
    assert start_weights(shipped, kept_dir, first) == shipped  # nothing kept yet
    kept = keep_weights(Candidate(EDGE, {}, {}, trained), kept_dir, "ft-1")
    assert kept == kept_dir / "ft-1.pt" and kept.read_bytes() == trained.read_bytes()
    promoted = current_model(EDGE, "ft-1", None, "edge")
    assert start_weights(shipped, kept_dir, promoted) == kept
    assert start_weights(shipped, None, promoted) == shipped
