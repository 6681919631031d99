# Set-up on a fresh clone needs only Python 3.11: every target builds .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_ARGS ?=
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt $(PIP_ARGS)
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export RAY_AUTH_MODE ?= disabled
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.25

.PHONY: demo test test-shuffled gpu-check lint venv dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[dev]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: venv
	$(BIN)/kdci-ray sweep tune_configs/quickstart.yaml --overwrite

test: dev
	$(BIN)/ruff check kdci_ray tests benchmarks tools
	$(BIN)/python -m pytest -q

# the suite in a shuffled order (a seed of your choice: KDCI_TEST_SHUFFLE=7 make test-shuffled)
test-shuffled: dev
	KDCI_TEST_SHUFFLE=$${KDCI_TEST_SHUFFLE:-$$RANDOM} $(BIN)/python -m pytest -q

# every GPU path once on this machine's GPU (tools/gpu_check.py; --device cpu runs in the suite)
gpu-check: venv
	$(BIN)/python tools/gpu_check.py --device cuda --json gpu_check.json

lint: dev
	$(BIN)/ruff check kdci_ray tests benchmarks tools

clean:
	rm -rf $(VENV) results
