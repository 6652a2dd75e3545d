# Two commands for a fresh machine: `make demo` and `make test` (README, Quick start).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DEV_STAMP := $(VENV)/.requirements-dev-installed

DEMO_COCO ?= 0
DEMO_DIR ?= $(if $(filter 1,$(DEMO_COCO)),demo_out_coco14,demo_out)
DEMO_DEVICE ?= auto
DEMO_ARGS ?=
DEMO_DATASET := $(if $(filter 1,$(DEMO_COCO)),--dataset coco14,)

.PHONY: install install-dev lint test test-fast demo clean

install: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	touch $(DEV_STAMP)

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q tests

# The inner loop: everything but the end-to-end and multi-process runs marked slow (under 90 s on 2 cores).
test-fast: install-dev
	$(PY) -m pytest -q -m "not slow" tests

# The whole pipeline on the toy set (DEMO_COCO=1: the toy COCO set), report in $(DEMO_DIR)/report.md.
demo: install
	$(PY) run_pipeline.py --toy $(DEMO_DATASET) --work_dir $(DEMO_DIR) --device $(DEMO_DEVICE) $(DEMO_ARGS)

clean:
	rm -rf $(VENV) demo_out demo_out_coco14 .pytest_cache .ruff_cache
