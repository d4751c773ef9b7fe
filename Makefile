# Every target sets up its own virtual environment, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DSRL := $(VENV)/bin/dsrl
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
ARTIFACTS ?= artifacts
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The tests also exercise the optional task-suite extras (Meta-World, OGBench), so CI installs them in one
# resolve (the demo does not need them).
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,suite]'
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(DSRL) pipeline --task default --artifacts $(ARTIFACTS)

test: $(TEST_STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check dsrl_cli tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
