# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-strict lint venv clean bench docs

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

# The test suite (strict numerics are on by default, see tests/conftest.py).
test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --durations=15 tests

# Same suite with jax_debug_nans=True as well.
test-strict: $(STAMP)
	$(PY) -m pytest -q -n 2 --debug-nans tests

# API reference (Sphinx autodoc of the docstrings) into docs/_build/html.
docs: $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	$(PY) -m sphinx -W --keep-going -E -b html docs docs/_build/html

bench: $(STAMP)
	$(PY) benchmarks/closed_form.py
	$(PY) benchmarks/flows.py
	$(PY) benchmarks/train_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
