# Two commands a new user types: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two stamps: the demo installs only what it runs (.[lab]); the tests add the dev tools.
LAB := $(VENV)/.installed-lab
DEV := $(VENV)/.installed-dev

.PHONY: demo test bench lint format clean

$(LAB): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# A CPU build of torch from local disk; a bare range would fetch a CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[lab]"
	touch $(LAB)

$(DEV): $(LAB)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(DEV)

demo: $(LAB)
	$(PY) examples/mlp.py

test: $(DEV)
	$(PY) -m ruff check ptera tests examples benchmarks
	$(PY) -m pytest

bench: $(DEV)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

lint: $(DEV)
	$(PY) -m ruff check ptera tests examples benchmarks
	$(PY) -m ruff format --check ptera tests examples benchmarks

format: $(DEV)
	$(PY) -m ruff format ptera tests examples benchmarks
	$(PY) -m ruff check --fix ptera tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
