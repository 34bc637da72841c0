# The README's two commands: `make demo` and `make test`. Both set up .venv/ first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
WORK   ?= work

.PHONY: setup test test-fast demo bench bench-al gpu-check wheelhouse wheelhouse-check clean

# Idempotent: a second run checks a stamp and returns in seconds; the mmcv build is
# cached in ~/.cache/ray_app (RAY_APP_CACHE), outside the repo.
setup:
	@bash scripts/setup.sh

# The whole suite, slow end-to-end tests included (that is what CI runs).
test: setup
	$(PY) -m pytest -ra

# Without the slow end-to-end tests, for a quick loop while editing.
test-fast: setup
	$(PY) -m pytest -ra -m "not slow"

# Train, mine and infer on a generated sample with a local Ray; prints where outputs are.
demo: setup
	$(PY) scripts/demo.py --work $(WORK)/demo

bench: setup
	$(PY) bench/run_all.py

# Active learning through the real entry (docs/mining.md): each mining score against random,
# 3 seeds x 2 rounds; about 40 minutes on 2 cores. A benchmark, not a test.
bench-al: setup
	$(PY) bench/active_learning.py

# On a machine with one NVIDIA GPU (installed from a wheelhouse: docs/install.md): training with
# AMP on and off against a plain Runner, inference against the original loop, the start-up step
# by step; one table, and bench/results/gpu.json. Under 10 minutes (--deadline-s). DEVICE=cpu
# runs the same steps small on the CPU (what tests/test_gpu_check.py does).
DEVICE ?= cuda
gpu-check: setup
	$(PY) bench/gpu_check.py --device $(DEVICE)

# For machines with no network (docs/install.md): every wheel and mmcv's source in one folder,
# for PLATFORM (default: this machine's) and PYTHON (default 3.11); TORCH_INDEX_URL, TORCH=none.
# Then on the target: WHEELHOUSE=<folder> bash scripts/setup.sh
wheelhouse:
	@bash scripts/wheelhouse.sh

# Makes the wheelhouse, installs a fresh venv in /tmp from it with no network, imports the
# stack there (~15 min: mmcv is compiled). Not part of `make test`.
wheelhouse-check:
	@bash scripts/wheelhouse_check.sh

clean:
	rm -rf $(WORK) .pytest_cache
