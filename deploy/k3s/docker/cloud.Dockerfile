# syntax=docker/dockerfile:1
# The cloud service: CUDA runtime, torch with CUDA, transformers, gRPC and the admin API, non-root.
# torch from PyPI is the CUDA build on linux/amd64 (its CUDA libraries come as nvidia-* wheels); the
# CUDA base image brings the matching system libraries. Without a GPU it runs on the CPU (logged).
#   docker build -f deploy/k3s/docker/cloud.Dockerfile -t registry.example.com/edgeglm/cloud:0.1.0 .
# Build context: the repository root.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# libgl1 and libglib2.0-0: opencv-python loads them at import, even without a display.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && groupadd --system --gid 10001 edgeglm \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin edgeglm

RUN pip install "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY common ./common
COPY cloud ./cloud
RUN pip install ".[cloud]" && rm -rf /src

# The onnx backend's reference detector (single-node/); the glm backend reads its weights from a volume.
COPY sim/models/reference.onnx /opt/edgeglm/models/reference.onnx

WORKDIR /var/lib/edgeglm-cloud
USER 10001:10001
EXPOSE 50051 8080
ENTRYPOINT ["edgeglm-cloud"]
CMD ["serve", "--config", "/etc/edgeglm/cloud.yaml"]
