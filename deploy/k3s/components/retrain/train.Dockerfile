# syntax=docker/dockerfile:1
# The retraining image (the CronJob of this component): ultralytics and torch on the CPU for the
# fine-tune, the cloud package for the export, the registry and the signing, sim for the recipe it
# reuses, the world's dataset and the evaluation. Non-root, as the cloud image.
#   docker build -f deploy/k3s/components/retrain/train.Dockerfile -t registry.example.com/edgeglm/train:0.1.0 .
# Build context: the repository root.
FROM python:3.11-slim

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=0

# libgl1 and libglib2.0-0: opencv-python loads them at import, even without a display.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 edgeglm \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin edgeglm

# The CPU builds: this image trains on CPU nodes (a few minutes per run).
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
      --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY common ./common
COPY cloud ./cloud
COPY sim ./sim
COPY edge ./edge
RUN pip install ".[cloud,sim,train]" && rm -rf /src

# The model the fleet starts with and its weights (the fine-tune's start while the registry is empty),
# and the world dataset (seed 0) the base set is drawn from, generated once here.
COPY sim/models/edge.onnx sim/models/edge.pt /opt/edgeglm/models/
RUN python -c "from pathlib import Path; from sim.world.dataset import DatasetSpec, write_dataset; \
write_dataset(DatasetSpec(seed=0), Path('/opt/edgeglm/world'))"

WORKDIR /work
USER 10001:10001
ENTRYPOINT ["edgeglm-cloud"]
CMD ["train-edge", "--help"]
