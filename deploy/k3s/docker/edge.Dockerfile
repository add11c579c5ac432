# syntax=docker/dockerfile:1
# The edge agent: Python slim, ONNX Runtime on the CPU, the world-trained YOLO model, non-root.
# Multi-arch (python:slim, onnxruntime and opencv-python ship amd64 and arm64 builds):
#   docker buildx build --platform linux/amd64,linux/arm64 -f deploy/k3s/docker/edge.Dockerfile \
#     -t registry.example.com/edgeglm/edge:0.1.0 --push .
# Build context: the repository root.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# opencv-python loads libGL and glib at import, even without a display.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 edgeglm \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin edgeglm

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY common ./common
COPY edge ./edge
# A regular (not editable) install: the source folder is not needed at run time.
RUN pip install ".[edge]" && rm -rf /src

# The model the DaemonSet's edge.yaml points at (detector.model_path). A new model: a new image tag.
COPY sim/models/edge.onnx /opt/edgeglm/models/edge.onnx

WORKDIR /var/lib/edgeglm
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["edgeglm-edge"]
CMD ["run", "--config", "/etc/edgeglm/edge.yaml"]
