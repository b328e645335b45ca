# Two commands on a fresh machine with Python 3.11 and make:
#   make book   create .venv, install the pinned environment, execute every chapter, build _build/html
#               and the whole book as one PDF (_build/html/book.pdf)
#   make test   same set-up, then lint, unit tests, every chapter through nbmake (at the book's seeds and
#               again at shifted seeds), the book build, HTML checks
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NBTMP := .nbmake
# offset-check: every chapter once more, every seed shifted to values the book never uses
OFFSET_DIR := .nbmake-offset
TEST_SEED_OFFSET ?= 104729
CHAPTERS := $(shell grep -l '^kernelspec:' book/*.md)
# The execution cache is keyed on the code of nblib and the pinned environment as well as the notebooks:
# tools/cache_key.py hashes nblib/, requirements.lock, pyproject.toml and what is installed in the venv.
CACHE_KEY = $(shell $(PYTHON) tools/cache_key.py --venv $(VENV))

.PHONY: axe system-packages cache-guard venv lock book book-force pdf test lint unit nbmake offset-check html-check \
  browser-check repo-check lab bench clean

venv: $(STAMP)

# The venv is installed by uv (pinned; bootstrapped with pip into the venv): measured on a fresh 2-core
# machine with empty caches, 78 s against pip's 126 s for the same lock, bytecode compiled by both
# (README, "The environment"). uv does not read pip's configuration, so the wheel folders pip is set to
# look in (find-links) and PIP_EXTRA_INDEX_URL (e.g. PyTorch's CPU index) are passed on to it.
UV_VERSION := 0.13.9
PIP_FIND_LINKS_CONFIG = $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_SOURCES = $(foreach d,$(PIP_FIND_LINKS_CONFIG),--find-links $(d)) \
  $(foreach u,$(PIP_EXTRA_INDEX_URL),--extra-index-url $(u)) \
  $(if $(PIP_EXTRA_INDEX_URL),--index-strategy unsafe-best-match)
UV_PIP = $(BIN)/uv pip install --quiet --python $(BIN)/python

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 is needed (python3.11 not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==24.3.1 uv==$(UV_VERSION)
	$(UV_PIP) --compile-bytecode $(UV_SOURCES) -r requirements.lock
	$(UV_PIP) --no-deps --no-build-isolation -e .
	touch $@

# requirements.lock and environment.yml from pyproject.toml (tools/lock.py, uv pinned there and in the
# test group): edit a pin in pyproject.toml, run make lock, commit all three. tests/repo checks them.
lock: venv
	$(BIN)/python tools/lock.py

cache-guard:
	@mkdir -p _build
	@if [ "$$(cat _build/.cache_key 2>/dev/null)" != "$(CACHE_KEY)" ]; then \
	  echo "nblib or the environment changed: clearing the execution cache"; \
	  rm -rf _build/.jupyter_cache; echo "$(CACHE_KEY)" > _build/.cache_key; fi

book: venv cache-guard
	$(BIN)/jupyter-book build . -W --keep-going
	@$(MAKE) --no-print-directory system-packages
	$(BIN)/python tools/book_pdf.py $(PDF_IF_BROWSER)

# Re-execute every chapter, whatever the cache holds (used by make test).
book-force: venv
	rm -rf _build/.jupyter_cache _build/html _build/jupyter_execute _build/.doctrees _build/pdf
	$(BIN)/jupyter-book build . -W --keep-going
	@$(MAKE) --no-print-directory system-packages
	$(BIN)/python tools/book_pdf.py $(PDF_IF_BROWSER)

# ruff (pinned; settings in pyproject.toml) on the Python files, and on the chapters' code cells with the
# book's 88 columns (tools/chapter_code.py reports them at their .md lines). Both run; either fails lint.
lint: venv
	@status=0; \
	  $(BIN)/ruff check nblib tests benchmarks tools book/_ext || status=1; \
	  $(BIN)/python tools/chapter_code.py --ruff $(BIN)/ruff || status=1; \
	  exit $$status

unit: venv
	$(BIN)/python -m pytest tests/unit -q

nbmake: venv
	rm -rf $(NBTMP) && mkdir -p $(NBTMP)
	for f in $(CHAPTERS); do $(BIN)/jupytext --quiet --to ipynb --output $(NBTMP)/$$(basename $${f%.md}).ipynb $$f; done
	cd $(NBTMP) && ../$(BIN)/python -m pytest --nbmake --nbmake-timeout=900 --overwrite -q -p no:cacheprovider *.ipynb

# Every chapter on fresh draws: BOOK_SEED_OFFSET shifts every seed (nblib.book_seeds); every gate must hold.
offset-check: venv
	rm -rf $(OFFSET_DIR) && mkdir -p $(OFFSET_DIR)
	for f in $(CHAPTERS); do $(BIN)/jupytext --quiet --to ipynb --output $(OFFSET_DIR)/$$(basename $${f%.md}).ipynb $$f; done
	cd $(OFFSET_DIR) && BOOK_SEED_OFFSET=$(TEST_SEED_OFFSET) ../$(BIN)/python -m pytest --nbmake \
	  --nbmake-timeout=900 --overwrite -q -p no:cacheprovider *.ipynb

# html-check compares the glued numbers of the two clean executions (.nbmake and the forced build).
html-check: venv system-packages
	OFFSET_DIR=$(OFFSET_DIR) TEST_SEED_OFFSET=$(TEST_SEED_OFFSET) $(BIN)/python -m pytest tests/book -q

# Debian packages that make book and make test need, each with what shows it is there (a command on
# PATH, or a file): chromium (the PDF, the browser tests), poppler-utils (pdftoppm renders the PDF's pages
# for tests/book) and npm (installs axe-core for the accessibility tests). As root, the missing ones are
# installed with one apt-get; otherwise this says which and how (README, "System packages"), and the
# checks that need them skip (or fail, when CI is set). CHROMIUM=/path/to/chromium stands in for chromium.
DEBIAN_NEEDS := chromium:$${CHROMIUM:-chromium} poppler-utils:pdftoppm npm:npm
system-packages:
	@missing=""; for need in $(DEBIAN_NEEDS); do pkg=$${need%%:*}; probe=$${need#*:}; \
	  if [ "$${probe#/}" != "$$probe" ]; then [ -e "$$probe" ] && continue; \
	  else command -v "$$probe" >/dev/null 2>&1 && continue; fi; missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing (apt-get install)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	      || echo "apt-get could not install:$$missing"; \
	  else \
	    echo "missing Debian packages:$$missing, and this is not root: install them with"; \
	    echo "  sudo apt-get install$$missing   (README, 'System packages', says how without root)"; \
	  fi; \
	fi

# Every page in headless Chromium (Debian's chromium, Python playwright; no browser download).
browser-check: venv system-packages
	@$(MAKE) --no-print-directory axe
	$(BIN)/python -m pytest tests/browser -q

# The whole book as one PDF (tools/book_pdf.py: every page printed by headless Chromium, merged with
# pypdf, a bookmark per chapter): _build/pdf/book.pdf, copied to _build/html/book.pdf for the download menu.
# make book and book-force end with it; without chromium (and not as root) they warn and leave it out,
# except under CI, where that is an error.
PDF_IF_BROWSER := $(if $(CI),,--skip-without-browser)
pdf: venv system-packages
	@test -f _build/html/index.html || $(MAKE) --no-print-directory book
	$(BIN)/python tools/book_pdf.py

# axe-core (the accessibility engine tests/browser injects into every page), pinned, from the npm
# registry into .axe/ (no browser download); npm comes from system-packages.
AXE_VERSION := 4.10.2
axe: system-packages
	@if [ ! -f .axe/node_modules/axe-core/axe.min.js ]; then \
	  if command -v npm >/dev/null 2>&1; then \
	    npm install --silent --no-audit --no-fund --prefix .axe axe-core@$(AXE_VERSION); \
	  else \
	    echo "axe: npm is not installed: the accessibility tests skip (CI: fail)"; \
	  fi; \
	fi

# Repository checks: Binder (repo2docker, environment.yml pins), the Pages workflow, the cache key.
repo-check: venv system-packages
	$(BIN)/python -m pytest tests/repo -q

test: system-packages lint unit nbmake offset-check book-force html-check browser-check repo-check

lab: venv
	$(BIN)/jupyter lab book/

# Benchmarks (not tests): install the optional peer libraries, measure, write benchmarks/results/*.json,
# which the Performance appendix renders. BENCH_ARGS=--quick for a smoke run.
bench: venv
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt torch==2.13.0
	cd benchmarks && ../$(BIN)/python regularizer.py $(BENCH_ARGS)
	cd benchmarks && ../$(BIN)/python label_noise_throughput.py $(BENCH_ARGS)
	cd benchmarks && ../$(BIN)/python book_time.py

clean:
	rm -rf _build
