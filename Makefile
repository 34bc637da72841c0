# The README's two commands: `make demo` and `make test`. Both set up .venv/ first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
WORK   ?= work

.PHONY: setup test test-fast demo bench clean

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

clean:
	rm -rf $(WORK) .pytest_cache
