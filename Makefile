# Two commands, on a fresh clone, with nothing installed by hand:
#   make demo   set up .venv/ and run the quickstart (every stage, under 15 minutes)
#   make test   set up .venv/ and run the tests
#   make docs   set up .venv/ and build the documentation site into site/ (strict)
# All create .venv/ in the repository root, or reuse it when setup.cfg is unchanged.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export RAY_AUTH_MODE ?= disabled

.PHONY: venv demo test test-all docs clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/install.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) scripts/install.py ".[dev,export]"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/nasbert quickstart runs/quickstart

# The suite is mostly single-threaded Python over tiny tensors: two processes of one
# thread each (pytest-xdist, a file per process at a time) take it from 4 min 41 s to
# 3 min 2 s on 2 cores; two processes of two threads each were slower than one (5 min 5 s).
test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

test-all: venv
	$(PY) -m pytest -q -m ""

# mkdocs.yml: the pages in docs/, the API reference read from the source, results/.
docs: venv
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs site .pytest_cache
