# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv (once) with everything it needs, then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-remote bench-epics bench-solvers bench-runs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,mpi,viewer,queueserver]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bluesky-ptycho demo --output out/demo

# napari's tests need a display with OpenGL: a virtual one (Xvfb + Mesa's software GL) where
# xvfb-run is installed (.ci/run installs it; README: set-up); without it they skip and say so.
XVFB := $(shell command -v xvfb-run >/dev/null 2>&1 && echo 'env QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1280x1024x24"')

# Lint, format, layers, types, then the suite.
CHECKED := bluesky_ptycho tests benchmarks profiles

lint: $(STAMP)
	$(BIN)/ruff check $(CHECKED)
	$(BIN)/ruff format --check $(CHECKED)
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint
	$(XVFB) $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The remote back-end end to end (ZeroMQ, serve, Dask workers) on 2,000 distinct raw frames
# (recorded once into benchmarks/.frames, ~9 GB): page cache and disk, 1 and 2 workers, batch
# sizes, a killed worker, Dask's dispatch; then the live reconstruction's lag at 10 and 50 Hz.
bench-remote: $(STAMP)
	$(BIN)/python benchmarks/remote.py --frames 10000
	$(BIN)/python benchmarks/live.py

# Over Channel Access against the soft IOC: frames/s (EPICS vs simulated devices) and the object
# error with the stage's readbacks against the planned positions.
bench-epics: $(STAMP)
	$(BIN)/python benchmarks/epics.py

# Solvers against pty-chi (in its own venv, built once), the 1600-frame test of Daurer et al. 2017.
.venv-ptychi/bin/python:
	bash benchmarks/ptychi_env.sh .venv-ptychi

bench-solvers: $(STAMP) .venv-ptychi/bin/python
	$(BIN)/python benchmarks/solvers.py

# `bluesky-ptycho runs` on 300 stored scans (a few minutes to store them): end to end, a new
# process each time, and the listing alone.
bench-runs: $(STAMP)
	$(BIN)/python benchmarks/runs.py

clean:
	rm -rf $(VENV) .venv-ptychi out
