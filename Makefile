# The front doors. Prerequisites: Python 3.11 and make; everything else comes from
# toolchain.lock into environments cached under $(PT2TF_CACHE) (default ~/.cache/pt2tf).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
export PT2TF_CACHE ?= $(HOME)/.cache/pt2tf
TOOLCHAIN := PYTHONPATH=toolchain $(PYTHON) -m pt2tf_toolchain
NOX = $(shell $(TOOLCHAIN) path tools)/bin/nox --no-color

.PHONY: all test matrix lock tools clean clean-envs help

help:
	@echo "make all        export → … → report, default lane (grows as stages land)"
	@echo "make test       the whole test suite: lint, lock check, every stage that exists"
	@echo "make matrix     every stage for every lane"
	@echo "make lock       regenerate toolchain.lock from toolchain.toml"
	@echo "make clean      remove artifacts/, models/, reports/"
	@echo "make clean-envs remove cached envs the current lock no longer uses"

tools:
	@echo "==> tools env (nox, uv, ruff, pytest) from toolchain.lock"
	@$(TOOLCHAIN) env tools >/dev/null

all: tools
	@echo "==> export: ResNet18 → ONNX + PyTorch reference (default lane)"
	@$(NOX) -s export
	@echo "==> done. Artifacts:"
	@ls -1 artifacts/*/model.onnx artifacts/*/reference.npz artifacts/*/export.json

test: tools
	@echo "==> lint, then every test suite in its locked env"
	@$(NOX) -s lint tests

matrix: tools
	@echo "==> every lane: export"
	@$(NOX) -t matrix

lock: tools
	@echo "==> resolving toolchain.toml → toolchain.lock"
	@$(NOX) -s lock

clean:
	@echo "==> removing artifacts/ models/ reports/ .nox/"
	@rm -rf artifacts models reports .nox

clean-envs:
	@echo "==> pruning cached envs under $(PT2TF_CACHE)/envs"
	@$(TOOLCHAIN) prune
