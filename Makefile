# cifarflow: `make run` (the main job) and `make test` (the whole suite) do all setup on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= work
# embedded: a CIFAR-10-format archive (50k+10k) that `cifarflow synth` generates, so `make run` needs no network.
SOURCE ?= embedded
RUN_ARGS ?=
PYTEST_ARGS ?=
MINIKUBE_ARGS ?=

.PHONY: help venv checkov-venv check-java crds run demo test lint unit images-test minikube-up minikube-down clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml requirements/constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cifarflow needs Python 3.11+ (found " + sys.version.split()[0] + ")")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed ## Create .venv with cifarflow and everything the tests use

# checkov pins botocore/boto3 versions cifarflow cannot share, so it lives in a venv of its own.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/pip install -q checkov==$(CHECKOV_VERSION)
	@touch $@

checkov-venv: $(CHECKOV_VENV)/.installed ## checkov (for the rendered Kubernetes manifests) in .venv-checkov

crds: ## Fetch the pinned upstream CRDs into .cache/crds (for a checkout without ../shared/crds beside it)
	scripts/fetch-crds.sh

check-java: ## Spark 4 needs Java 17+
	@if ! command -v java >/dev/null 2>&1; then \
	  echo "error: Java 17+ is required by Spark 4 (fix: apt-get install -y openjdk-17-jre-headless, or brew install openjdk@17)" >&2; exit 2; fi
	@v=$$(java -version 2>&1 | awk -F'"' '/version/ {split($$2, a, "."); print a[1]}'); \
	if [ "$${v:-0}" -lt 17 ]; then \
	  echo "error: Java $$v found, Spark 4 needs 17+ (fix: install openjdk-17 and put it first on PATH)" >&2; exit 2; fi

run: venv check-java ## Ingest, preprocess, train, evaluate, promote (SOURCE=embedded|cifar10|cifar100|URL|path)
	@if [ "$(SOURCE)" = embedded ]; then \
	  $(BIN)/cifarflow synth --out $(WORKDIR)/synth --train 50000 --test 10000; \
	  src=$(WORKDIR)/synth/cifar-10-python.tar.gz; else src='$(SOURCE)'; fi; \
	$(BIN)/cifarflow run --source "$$src" --workdir $(WORKDIR) $(RUN_ARGS)

demo: venv check-java ## The same pipeline on a generated CIFAR-format archive (no network needed)
	$(BIN)/cifarflow synth --out $(WORKDIR)/synth --train 5000 --test 1000
	$(BIN)/cifarflow run --source $(WORKDIR)/synth/cifar-10-python.tar.gz --workdir $(WORKDIR) --epochs 3 $(RUN_ARGS)

lint: venv ## ruff + mypy
	$(BIN)/ruff check src tests benchmarks pipelines images
	$(BIN)/ruff format --check src tests benchmarks pipelines images
	$(BIN)/mypy

unit: venv check-java checkov-venv ## pytest (real Spark, TensorFlow, S3/GCS servers, fake Kubernetes API)
	CIFARFLOW_CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest -m "not docker" $(PYTEST_ARGS)

# Needs root (dockerd, debootstrap); installs docker.io and debootstrap when missing. Caches in .cache/images/.
images-test: venv ## Build the three images on a Debian stand-in base with a private dockerd, smoke-run them
	scripts/images-test.sh

minikube-up: venv ## minikube + KFP + operators, skaffold run -p minikube, submit the pipeline (docs/minikube.md)
	scripts/minikube-up.sh $(MINIKUBE_ARGS)

minikube-down: ## Delete the minikube cluster (MINIKUBE_ARGS=--keep-cluster or --stop to keep it)
	scripts/minikube-down.sh $(MINIKUBE_ARGS)

test: lint unit images-test ## The whole suite (what CI runs)

clean: ## Remove the venv, caches and local work folders
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache $(WORKDIR) build dist
