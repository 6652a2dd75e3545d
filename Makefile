# Two commands for a fresh machine: `make demo` and `make test` (README, Quick start).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

DEMO_DIR ?= demo_out
DEMO_STEPS ?=
DEMO_DEVICE ?= auto

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

demo: install
	bash tool/demo.sh $(PY) $(DEMO_DIR) "$(DEMO_STEPS)" $(DEMO_DEVICE)

clean:
	rm -rf $(VENV) demo_out .pytest_cache
