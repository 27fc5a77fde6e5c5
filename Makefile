# Two commands on a fresh machine: `make run` (the quickstart) and `make test` (the test suite).
# Each installs what it needs into .venv first (once; again when setup.cfg changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/quickstart

.PHONY: run test install install-dev clean

$(VENV)/.runtime: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# torch first and pinned: the CPU wheel on this machine's disk, never a multi-GB CUDA build pulled in by monai.
$(VENV)/.dev: $(VENV)/.runtime
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

run: $(VENV)/.runtime
	$(VENV)/bin/medjax train --config quickstart --workdir $(RUN_DIR)
	$(VENV)/bin/medjax evaluate --config quickstart --workdir $(RUN_DIR)

# Tests marked `serial` (several JAX processes with several devices each) run alone after the parallel pass:
# beside another test worker they oversubscribe the 2 CPUs, and jax.distributed's coordination service gave up.
test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q --site-dir "$$(mktemp -d)"
	$(PY) -m pytest -q -n 2 --durations=20 -m "not serial"
	$(PY) -m pytest -q --durations=5 -m serial

clean:
	rm -rf $(VENV) runs .pytest_cache
