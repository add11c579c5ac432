"""Hard crops for the world GLM: the edge detector's own detections, as the cloud is asked about them.

The samples EdgeGLM sends are the edge's uncertain detections, and most of the GLM's mistakes were
on exactly those: loose boxes, look-alikes the edge took for a class, a cat called a cup. Generic
crops (`sim.glm.crops.frame_crops`) teach the classes; these teach the judgement the cloud is asked
to make. The committed edge model runs on generated train-split frames it was never trained on (it
saw frames 0..799; these start at `FIRST_FRAME`), never on the test split the judge is measured on
(`sim.glm.judge`). Each detection becomes the crop the `glm` backend would look at (its focus on the
claim, `cloud.backends.glm.focused_image`, the edge's own crop rule), with the edge's claim (label,
score, uncertainty_band) and the truth: the label of the object under it (IoU >= 0.5, any class), or
nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rich.progress import track

from cloud.backends.glm import focused_image
from cloud.convert import CloudDetection
from common.boxes import iou
from common.detect import Detector, DetectorConfig
from sim.glm.crops import NOTHING, Claim, Crop
from sim.glm.evaluate import world_sample
from sim.world.dataset import DatasetSpec, render_dataset_image
from sim.world.photos import CLASSES

FIRST_FRAME = 10_000  # far past the 800 train-split frames the edge model was trained on
MIN_SCORE = 0.15  # below the uncertainty band too: the edge's faint guesses are negatives worth seeing
MATCH_IOU = 0.5  # as sim.glm.judge counts a detection true


def edge_detection_crops(model: Path, frames: int, seed: int) -> Iterator[Crop]:
    """One crop per detection of the edge model (score >= MIN_SCORE) on `frames` unseen train-split frames."""
    detector = Detector(DetectorConfig(model_path=model, conf_threshold=MIN_SCORE))
    spec = DatasetSpec(seed=seed)
    for index in track(range(FIRST_FRAME, FIRST_FRAME + frames), description="edge detections for the GLM"):
        scene = render_dataset_image(spec, "train", index)
        degraded = bool(scene.conditions.darkness_gain or scene.conditions.blur_sigma)
        for det in detector.detect(scene.image):
            under = [obj for obj in scene.objects if iou(obj.box, det.box) >= MATCH_IOU]
            best = max(under, key=lambda obj: iou(obj.box, det.box), default=None)
            claim = CloudDetection(det.label, CLASSES.index(det.label), det.score, det.box)
            image = focused_image(world_sample(scene.image, (claim,), f"hard{index}", index))
            if min(image.shape[:2]) < 8:
                continue
            label = NOTHING if best is None else best.label
            hard = degraded or (best is not None and (best.small or best.occluded))
            yield Crop(image.copy(), label, hard, index, Claim(((det.label, round(det.score, 2)),), "uncertainty_band"))
