# Conveyor: `make help` lists the targets.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
EXTRAS  = test,gateway,lambda,local,darknet,deepaas,docker
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install lint test test-fast test-light run-local bench drill images images-test models weights clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

PLUGINS = tests/plugins/conveyor-demo-model tests/plugins/conveyor-test-models

$(STAMP): setup.cfg pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

install: $(STAMP) ## Create .venv with Conveyor and everything the tests need

# import-linter and mypy read the installed layout (conveyor, conveyor.handlers, ...), which the
# editable install only provides through an import hook they cannot follow: give them a copy.
LINT_TREE = build/lint

lint: $(STAMP) ## Lint: ruff, the layering contracts (.importlinter) and mypy on the package
	$(BIN)/ruff check runtime handlers entrypoints gateway tests images bench
	rm -rf $(LINT_TREE) && mkdir -p $(LINT_TREE)
	cp -r runtime $(LINT_TREE)/conveyor && cp -r handlers $(LINT_TREE)/conveyor/handlers
	cp -r entrypoints $(LINT_TREE)/conveyor/entrypoints && cp -r gateway $(LINT_TREE)/conveyor/gateway
	PYTHONPATH=$(LINT_TREE) $(BIN)/lint-imports .importlinter
	cd $(LINT_TREE) && ../../$(BIN)/mypy --config-file ../../setup.cfg -p conveyor 2>&1 \
	  | sed -e 's#^conveyor/handlers/#handlers/#; t' -e 's#^conveyor/entrypoints/#entrypoints/#; t' \
	    -e 's#^conveyor/gateway/#gateway/#; t' -e 's#^conveyor/#runtime/#'; \
	  exit $${PIPESTATUS[0]}

TEST_WORKERS ?= 2

test: $(STAMP) lint ## Lint, then run the whole test suite (TEST_WORKERS=2 processes; the images on one of them)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: $(STAMP) ## In seconds: the in-process pipeline and pure logic (no server, engine, model or process)
	$(BIN)/pytest --fast $(PYTEST_ARGS)

test-light: $(STAMP) ## The suite without the heavy tests
	$(BIN)/pytest -m "not heavy" $(PYTEST_ARGS)

LOCAL_DIR  ?= var/local
LOCAL_ARGS ?=

# Without --once the loop keeps running after the samples, with the gateway (the web page) beside it,
# until Ctrl-C; `make run-local LOCAL_ARGS=--once` processes the samples, prints the summary and exits.
run-local: $(STAMP) ## The event loop + web page on this machine (S3 server, YOLOv3-tiny, samples/); Ctrl-C stops
	$(BIN)/conveyor local --dir $(LOCAL_DIR) $(LOCAL_ARGS)

images: $(STAMP) ## Build the container images (private Docker engine; debootstrap base where no registry)
	$(BIN)/python images/tools/build.py

images-test: $(STAMP) ## Build (or reuse) the images and run them as OSCAR, Batch and Lambda would
	host=$$(images/tools/dockerd.sh start) && DOCKER_HOST=$$host $(BIN)/pytest tests/images $(PYTEST_ARGS)

MODELS = pose classify birds
models: ## Create the example DEEPaaS models' venvs in .venv-models/ (pose, classify, birds)
	@for m in $(MODELS); do images/$$m/install.sh || exit 1; done

BENCH_ARGS ?=
DRILL_ARGS ?=

bench: $(STAMP) ## Benchmarks vs faas-supervisor 1.5.8 and the model CLIs: table + bench/results/latest.json (6-10 min)
	$(BIN)/python -m bench $(BENCH_ARGS)

drill: $(STAMP) ## Fault drill: 1,000 events through `conveyor local` with faults injected (~10 min)
	$(BIN)/python -m bench.drill $(DRILL_ARGS)

weights: $(STAMP) ## Fetch and verify the YOLOv3-tiny weights for local runs
	$(BIN)/conveyor weights

clean: ## Remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
