# Set-up on a fresh clone needs only Python 3.11: every target builds .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_ARGS ?=
# pip installs without byte-compiling (it compiles one file at a time: half the install's time);
# COMPILE then compiles the venv and the package on every core. Compiled they must be: where
# PYTHONDONTWRITEBYTECODE is set Python writes nothing it compiles, and every process would compile
# torch and Ray again (the suite took twice as long). Like pip, it skips files that do not compile;
# the packages' own test folders are left out (never imported here).
PIP := $(BIN)/pip install --disable-pip-version-check -q --no-compile $(PIP_ARGS)
COMPILE := $(BIN)/python -m compileall -qq -j 0 -x '/tests?/' $(VENV)/lib kdci_ray >/dev/null || true
# Installs come from the lock files (`make lock` writes them: tools/lock.sh), every package pinned
# with its hashes, for Python 3.11. LOCK: requirements/cpu.lock (CPU Linux x86_64, torch's CPU
# build 2.13.0+cpu; `make dev` takes requirements/cpu-dev.lock, the same versions plus pytest and
# ruff), LOCK=requirements/gpu-cu13.lock on a CUDA 13 GPU node, LOCK= (empty) for pyproject.toml's
# ranges with torch and Ray pinned by constraints.txt (another Python or platform). After
# changing LOCK, `make clean` first.
LOCK ?= requirements/cpu.lock
DEV_LOCK ?= $(LOCK:cpu.lock=cpu-dev.lock)
LOCK_HELP := the CPU locks pin torch 2.13.0+cpu, PyTorch's CPU build: where pip cannot find it, \
  add PyTorch's CPU wheel index (PIP_ARGS='--extra-index-url <that index>'), or take \
  LOCK=requirements/gpu-cu13.lock (the CUDA 13 build) or LOCK= (pyproject.toml's ranges)
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export RAY_AUTH_MODE ?= disabled
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.25

.PHONY: demo test check test-shuffled gpu-check lint venv dev lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# $(call install,LOCK_FILE,EXTRAS): every package from the lock file (hash-checked), then this
# one alone; no lock file: pyproject.toml's ranges with EXTRAS, under constraints.txt
install = $(if $(1),($(PIP) -r $(1) || (echo "make: installing $(1) failed; $(LOCK_HELP)" >&2; \
  exit 1)) && $(PIP) --no-deps -e .,$(PIP) -c constraints.txt -e '.$(2)')

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt $(LOCK)
	$(call install,$(LOCK),)
	$(COMPILE)
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt $(DEV_LOCK)
	$(call install,$(DEV_LOCK),[dev])
	$(if $(LOCK),$(if $(filter $(LOCK),$(DEV_LOCK)),$(PIP) -e '.[dev]'))
	$(COMPILE)
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# the lock files, from pyproject.toml (UPGRADE=1 make lock: newer releases; tools/lock.sh)
lock:
	tools/lock.sh

demo: venv
	$(BIN)/kdci-ray sweep tune_configs/quickstart.yaml --overwrite

# pytest-xdist workers: the Ray tests wait on processes about a third of the time, so two share
# 2 cores well (TEST_WORKERS=0: one process, in collection order)
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist load)

# the whole suite (what CI runs): ruff, then every test; the slowest are listed at the end
test: dev
	$(BIN)/ruff check kdci_ray tests benchmarks tools
	$(PYTEST)

# the fast tier: no Ray, no kdci-ray driver processes (tests/tiers.py marks and guards it)
check: dev
	$(BIN)/ruff check kdci_ray tests benchmarks tools
	KDCI_TEST_FAST=1 $(PYTEST) -m "not slow"

# the suite in a shuffled order (a seed of your choice: KDCI_TEST_SHUFFLE=7 make test-shuffled)
test-shuffled: dev
	KDCI_TEST_SHUFFLE=$${KDCI_TEST_SHUFFLE:-$$RANDOM} $(PYTEST)

# every GPU path once on this machine's GPU (tools/gpu_check.py; --device cpu runs in the suite)
gpu-check: venv
	$(BIN)/python tools/gpu_check.py --device cuda --json gpu_check.json

lint: dev
	$(BIN)/ruff check kdci_ray tests benchmarks tools

clean:
	rm -rf $(VENV) results
