# `make repro` and `make test` do all the set-up themselves on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: repro test lint params-reference example-report install clean-venv

install: $(VENV)/.installed

# Reinstalled only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

repro: install
	dvc repro

test: install
	python -m pytest -q

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
