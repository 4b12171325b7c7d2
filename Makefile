# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-strict lint venv clean bench docs peers bench-peers

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The main job: the 2-D benchmark of Tong et al., quick preset (about two minutes on a
# 2-core CPU); prints where its table and figures are.
demo: $(STAMP)
	$(PY) -m experiments.toy2d --quick --workdir runs/demo

lint: $(STAMP)
	$(PY) -m ruff check fmjax experiments benchmarks tests

# The test suite (strict numerics are on by default, see tests/conftest.py), without the
# end-to-end runs of the experiments and notebooks (the slow tier, below).
test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --durations=15 -m "not slow" tests

# The slow tier: tiny end-to-end runs of every experiment and notebook.
test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=10 -m slow tests

# The suite of `make test` with jax_debug_nans=True as well.
test-strict: $(STAMP)
	$(PY) -m pytest -q -n 2 --debug-nans -m "not slow" tests

# API reference (Sphinx autodoc of the docstrings) into docs/_build/html.
docs: $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	$(PY) -m sphinx -W --keep-going -E -b html docs docs/_build/html

bench: $(STAMP)
	$(PY) benchmarks/closed_form.py
	$(PY) benchmarks/flows.py
	$(PY) benchmarks/train_speed.py

# The peers compared in benchmarks/train_speed.py: CPU torch and torchcfm 1.0.7 (installed
# without its own pins, which would pull a CUDA build of torch).
peers: $(STAMP)
	$(PY) -m pip install -q torch==2.13.0 torchdiffeq
	$(PY) -m pip install -q --no-deps torchcfm==1.0.7 torchdyn==1.0.6

# The training-speed and time-to-quality tables with torchcfm in the same run.
bench-peers: peers
	$(PY) -m benchmarks.train_speed --xla-threads 1 --peer-ttq

clean:
	rm -rf $(VENV) runs .pytest_cache
