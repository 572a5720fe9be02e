# `make repro` and `make test` do all the set-up themselves on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: repro test test-network lock lint params-reference example-report install clean-venv

install: $(VENV)/.installed

# The exact versions of constraints.txt (the ranges of pyproject.toml, resolved by `make lock`) for the running
# Python, each file checked against its hash; then the project itself, whose dependencies must all be there
# (pip check). Each step reruns only when its file changes.
$(VENV)/.locked: constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r constraints.txt
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.locked
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

repro: install
	dvc repro

# one pytest-xdist worker per CPU core (tests/conftest.py shares the cores' threads among them)
test: install
	python -m pytest -q -n auto

# The tests that ask the package index (pytest marker `network`; `make test` leaves them out): every pin that
# constraints.txt gives each admitted Python has a release for it. .ci/run runs them.
test-network: install
	python -m pytest -q -n auto -m network

# constraints.txt from pyproject.toml's ranges by uv: one lock for every Python from requires-python's lower bound
# up, with environment markers where the versions differ, and the hashes of every file of each pin. uv reads no
# pip configuration and resolves against its default index, PyPI. Pins that still fit stay; LOCK_FLAGS=--upgrade
# moves every pin to its newest release (or --upgrade-package NAME one), then rerun `make repro` for dvc.lock.
# .ci/lock-constraints.txt holds torch and torchvision at the versions dvc.lock was made with.
LOWEST_PYTHON := $(shell sed -n 's/^requires-python = ">=\([0-9.]*\).*/\1/p' pyproject.toml)
LOCK_FLAGS ?=
lock: $(VENV)/.locked
	uv pip compile --quiet pyproject.toml --extra dev --universal --python-version $(LOWEST_PYTHON) \
		--generate-hashes --constraint .ci/lock-constraints.txt --output-file constraints.txt $(LOCK_FLAGS)

# ruff, configured in pyproject.toml: the linter, then the formatter in check mode (changes nothing)
lint: install
	ruff check .
	ruff format --check .

# docs/params.md from params.yaml, pipeline/config.py and dvc.yaml (tests/test_docs.py checks it is current)
params-reference: install
	python tools/params_reference.py

# docs/example-report/ from reports/report.html of the default run (after `make repro` or `dvc pull`)
example-report: install
	python tools/example_report.py

clean-venv:
	rm -rf $(VENV)
