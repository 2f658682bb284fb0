# The front doors. Prerequisites: Python 3.11 and make; everything else comes from
# toolchain.lock into environments cached under $(PT2TF_CACHE) (default ~/.cache/pt2tf).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
export PT2TF_CACHE ?= $(HOME)/.cache/pt2tf
TOOLCHAIN := PYTHONPATH=toolchain $(PYTHON) -m pt2tf_toolchain
NOX = $(shell $(TOOLCHAIN) path tools)/bin/nox --no-color

.PHONY: all test matrix models lane lint-and-export-tests bench serve serve-bench loadtest rollout conformance checks lock tools clean clean-envs help
LANE ?= $(shell PYTHONPATH=toolchain $(PYTHON) -c "from pt2tf_toolchain.matrix import load_matrix; print(load_matrix().default_lane)")
SERVING_IMAGE = $(shell PYTHONPATH=toolchain $(PYTHON) -c "from pt2tf_toolchain.matrix import load_matrix; print(load_matrix().lane('$(LANE)').serving_image)")
# auto: the real image in Docker when an engine answers and the lane's image is present, else the embedded server
SERVER ?= auto
# seeded (default: offline, labels are not ImageNet predictions), IMAGENET1K_V1 (torchvision's file from the
# torch hub cache, downloaded and sha256-checked when absent and online), or a state_dict file
WEIGHTS ?= seeded
# a torchvision classifier (resnet18, mobilenet_v3_large, ...) or your own: package.module:factory with SPEC= (README)
MODEL ?= resnet18
# your own model's preprocessing spec (TOML: name, resize, crop, interpolation, mean, std, labels); torchvision's: none
SPEC ?=
# The name the exported model is served under: its export.json's (a torchvision model's own, a user's spec's `name`).
EXPORTED_MODEL = PYTHONPATH=toolchain:convert $(PYTHON) -c "from pathlib import Path; \
  from pt2tf_toolchain.matrix import load_matrix; from pt2tf_convert.repository import served_model; \
  print(served_model(Path('artifacts') / load_matrix().default_lane, None))"
# default: 5 concurrency steps per protocol, batching off and on, and the capacity search (~12 min on the AVX-512 EPYC); full: the long sweep; smoke: seconds
LOADTEST_PROFILE ?= default
# yes: `make models` measures each passing cell's speed (bench and serve stages); no: parity only
SPEED ?= yes
# the model version `make rollout` takes from canary to stable
CANDIDATE ?=

help:
	@echo "make all        export → convert → verify → serve check → loadtest + SLO verdict, default lane"
	@echo "                WEIGHTS=IMAGENET1K_V1 (torch hub cache) or WEIGHTS=path/state_dict.pt; default seeded"
	@echo "                MODEL=mobilenet_v3_large (a torchvision classifier; default resnet18), or your own model:"
	@echo "                MODEL=package.module:factory WEIGHTS=state_dict.pt SPEC=spec.toml (README: your own model)"
	@echo "make test       the whole test suite: lint, lock check, export, every lane's convert+verify"
	@echo "make matrix     export → convert → verify on every lane, then one table of all lanes"
	@echo "make lane LANE=onnx-tf   one lane: export, convert, verify, and its convert and serve test suites"
	@echo "make models     nine torchvision architectures on every lane: export → convert → verify, then Session ÷ ONNX"
	@echo "                Runtime and served gRPC speed (reports/models.md, .html); MODELS='resnet50 swin_t' for some,"
	@echo "                SPEED=no for parity only"
	@echo "make serve      serve models/<lane>/ on :8500 (gRPC) and :8501 (REST) until Ctrl-C; SERVER=docker|embedded"
	@echo "make serve-bench  served vs in-process throughput, batching on/off, REST vs gRPC (reports/serve-bench.md)"
	@echo "make loadtest   Locust sweep, open-loop capacity search, SLO gate, reports/loadtest/;"
	@echo "                ARGS='--rest URL --grpc HOST:PORT' for another server"
	@echo "make rollout CANDIDATE=N  version N from canary to stable through TF Serving's labels, gated by load;"
	@echo "                ARGS='--grpc H:P --rest URL --config models.config --stable M' for a running TF Serving"
	@echo "make conformance LANE=x  the conformance suite; PT2TF_CONFORMANCE_REST/_GRPC/_MODELS for a running TF Serving"
	@echo "make checks     the workflow, Dockerfile, compose file and Kubernetes manifests through their linters and schemas"
	@echo "make bench      PyTorch vs ONNX Runtime vs every converted lane, one run (reports/bench.md)"
	@echo "make lock       regenerate toolchain.lock from toolchain.toml"
	@echo "make clean      remove artifacts/, models/, reports/"
	@echo "make clean-envs remove cached envs the current lock no longer uses"

tools:
	@echo "==> tools env (nox, uv, ruff, pytest) from toolchain.lock"
	@$(TOOLCHAIN) env tools >/dev/null

all: tools
	@echo "==> export: $(MODEL) → ONNX + PyTorch reference (default lane, WEIGHTS=$(WEIGHTS))"
	@$(NOX) -s export -- --model "$(MODEL)" --weights "$(WEIGHTS)" $(if $(SPEC),--spec "$(SPEC)")
	@echo "==> convert: ONNX → TF Serving model version (default lane)"
	@$(NOX) -s convert
	@echo "==> verify: PyTorch vs ONNX Runtime vs SavedModel (default lane)"
	@$(NOX) -s verify
	@echo "==> serve check: the embedded server answers REST and gRPC as in-process TensorFlow does"
	@$(NOX) -s serve-check
	@echo "==> loadtest: Locust over REST and gRPC, batching off then on, capacity at the p99 objective, SLO gate (LOADTEST_PROFILE=$(LOADTEST_PROFILE))"
	@$(NOX) -s loadtest -- --profile $(LOADTEST_PROFILE) --search
	@echo "==> done. Reports:"
	@ls -1d reports/*/parity.md reports/*/parity.json reports/*/parity_errors.png reports/loadtest/* models/*/"$$($(EXPORTED_MODEL))"/* 2>/dev/null

test: tools
	@echo "==> lint, then every test suite in its locked env"
	@$(NOX) -s lint tests

matrix: tools
	@echo "==> every lane: export, convert, verify; then the side-by-side table"
	@$(NOX) -t matrix

models: tools
	@case "$(SPEED)" in yes|no) ;; *) echo "SPEED=$(SPEED): use yes (measure each passing cell's speed) or no"; exit 2;; esac
	@echo "==> architectures × lanes: export, convert, verify, bench, serve each; one cell per pair (reports/models.md, .html)"
	@$(NOX) -s models -- $(MODELS) $(if $(filter no,$(SPEED)),--no-speed)

lane: tools
	@echo "==> lane $(LANE): export, convert, verify; then its convert and serve test suites"
	@$(NOX) -s export-$(LANE) convert-$(LANE) verify-$(LANE) "tests(convert-$(LANE))" "tests(serve-$(LANE))"

checks: tools
	@echo "==> the deployment files: zizmor, check-jsonschema, hadolint, kubernetes-validate, lane consistency"
	@$(NOX) -s "tests(checks)"

lint-and-export-tests: tools
	@echo "==> lint, then the toolchain and export suites"
	@$(NOX) -s lint "tests(toolchain)" "tests(export)"

bench: tools
	@echo "==> bench: PyTorch, ONNX Runtime and each converted lane in one run"
	@$(NOX) -s bench

serve: tools
	@case "$(SERVER)" in auto|docker|embedded) ;; *) echo "SERVER=$(SERVER): use auto, docker or embedded"; exit 2;; esac
	@if [ "$(SERVER)" = docker ] && ! docker info >/dev/null 2>&1; then \
	  echo "SERVER=docker: no Docker engine answers (docker info failed); use SERVER=embedded"; exit 2; fi
	@if [ "$(SERVER)" = docker ] || { [ "$(SERVER)" = auto ] && docker info >/dev/null 2>&1 \
	      && docker image inspect $(SERVING_IMAGE) >/dev/null 2>&1; }; then \
	  echo "==> serve: $(SERVING_IMAGE) in Docker (docker/compose.yaml), lane $(LANE); Ctrl-C stops it"; \
	  LANE=$(LANE) SERVING_IMAGE=$(SERVING_IMAGE) docker compose -f docker/compose.yaml up; \
	else \
	  echo "==> serve: the embedded server (no Docker engine or no $(SERVING_IMAGE) here), lane $(LANE); Ctrl-C stops it"; \
	  $(NOX) -s serve-$(LANE); \
	fi

loadtest: tools
	@echo "==> loadtest against the embedded server (or: make loadtest ARGS='--rest URL --grpc HOST:PORT')"
	@PT2TF_LANE=$(LANE) $(NOX) -s loadtest -- --profile $(LOADTEST_PROFILE) --search $(ARGS)

rollout: tools
	@if [ -z "$(CANDIDATE)" ]; then echo "give the version to roll out: make rollout CANDIDATE=N"; exit 2; fi
	@echo "==> rollout of version $(CANDIDATE): load, canary, gate, promote, retire (rolls back on a failed gate)"
	@PT2TF_LANE=$(LANE) $(NOX) -s rollout -- --candidate $(CANDIDATE) $(ARGS)

conformance: tools
	@echo "==> conformance suite, lane $(LANE), against $${PT2TF_CONFORMANCE_REST:-the embedded server}"
	@$(NOX) -s conformance-$(LANE) -- $(ARGS)

serve-bench: tools
	@echo "==> serve-bench: in-process vs served, batching on vs off, REST vs gRPC (default lane)"
	@$(NOX) -s serve-bench

lock: tools
	@echo "==> resolving toolchain.toml → toolchain.lock"
	@$(NOX) -s lock

clean:
	@echo "==> removing artifacts/ models/ reports/ .nox/"
	@rm -rf artifacts models reports .nox

clean-envs:
	@echo "==> pruning cached envs under $(PT2TF_CACHE)/envs"
	@$(TOOLCHAIN) prune
