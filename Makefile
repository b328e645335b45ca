# Two commands on a fresh machine with Python 3.11 and make:
#   make book   create .venv, install the pinned environment, execute every chapter, build _build/html
#   make test   same set-up, then unit tests, every chapter through nbmake, the book build, HTML checks
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NBTMP := .nbmake
CHAPTERS := $(shell grep -l '^kernelspec:' book/*.md)
# The execution cache is keyed on the code of nblib and the pinned environment as well as the notebooks.
CACHE_KEY = $(shell cat nblib/*.py requirements.lock pyproject.toml | sha256sum | cut -c1-16)

.PHONY: cache-guard venv book book-force test unit nbmake html-check lab bench clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 is needed (python3.11 not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==24.3.1
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

cache-guard:
	@mkdir -p _build
	@if [ "$$(cat _build/.cache_key 2>/dev/null)" != "$(CACHE_KEY)" ]; then \
	  echo "nblib or the environment changed: clearing the execution cache"; \
	  rm -rf _build/.jupyter_cache; echo "$(CACHE_KEY)" > _build/.cache_key; fi

book: venv cache-guard
	$(BIN)/jupyter-book build . -W --keep-going

# Re-execute every chapter, whatever the cache holds (used by make test).
book-force: venv
	rm -rf _build/.jupyter_cache _build/html _build/jupyter_execute _build/.doctrees
	$(BIN)/jupyter-book build . -W --keep-going

unit: venv
	$(BIN)/python -m pytest tests/unit -q

nbmake: venv
	rm -rf $(NBTMP) && mkdir -p $(NBTMP)
	for f in $(CHAPTERS); do $(BIN)/jupytext --quiet --to ipynb --output $(NBTMP)/$$(basename $${f%.md}).ipynb $$f; done
	cd $(NBTMP) && ../$(BIN)/python -m pytest --nbmake --nbmake-timeout=900 -q -p no:cacheprovider *.ipynb

html-check: venv
	$(BIN)/python -m pytest tests/book -q

test: unit nbmake book-force html-check

lab: venv
	$(BIN)/jupyter lab book/

bench: venv
	$(BIN)/python benchmarks/label_noise_throughput.py

clean:
	rm -rf _build
