# Two commands for a fresh machine: `make demo` and `make test` (README, Quick start).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DEV_STAMP := $(VENV)/.requirements-dev-installed

DEMO_DIR ?= demo_out
DEMO_STEPS ?=
DEMO_DEVICE ?= auto
DEMO_COCO ?= 0

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

# The inner loop: everything but the end-to-end runs marked slow (under a minute).
test-fast: install-dev
	$(PY) -m pytest -q -m "not slow" tests

demo: install
	DEMO_COCO=$(DEMO_COCO) bash scripts/demo.sh $(PY) $(DEMO_DIR) "$(DEMO_STEPS)" $(DEMO_DEVICE)

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache
