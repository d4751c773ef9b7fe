# Every target sets up its own virtual environment, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DSRL := $(VENV)/bin/dsrl
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench
ARTIFACTS ?= artifacts
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test bench bench-learning bench-rl lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The tests also exercise the optional task-suite extras (Meta-World, OGBench) and SB3 (bench), so CI
# installs them in one resolve (the demo needs none). SB3 accepts the CPU torch installed above.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,suite,bench]'
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(DSRL) pipeline --task default --artifacts $(ARTIFACTS)

test: $(TEST_STAMP)
	$(PY) -m pytest

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Speed of the hot paths against references measured in the same run (one table, bench_out/results.json).
bench: $(BENCH_STAMP)
	$(PY) benchmarks/speed.py

# Learning curves and targets (tens of minutes): Stage 2 target, Stage 1 vs scratch, UTD sweep.
bench-learning: $(STAMP)
	$(PY) benchmarks/run.py

# dsrl vs the DSRL paper's SB3 recipe on the task suite, 3 seeds (docs/BENCHMARKS.md, "Third-party suite").
# Long-running (about 6 hours on 2 CPU cores); every run is a cached, resumable artifact under
# bench_out/rl_artifacts, so stop it any time and rerun to continue. Options: BENCH_RL_ARGS="--tasks ... --seeds N
# --env-steps N --eval-every N --eval-episodes N".
BENCH_RL_ARGS ?=
bench-rl: $(TEST_STAMP)
	$(PY) benchmarks/bench_rl.py $(BENCH_RL_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check dsrl_cli tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
