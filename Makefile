# `make repro` and `make test` do all the set-up themselves on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: repro test lock lint params-reference example-report install clean-venv

install: $(VENV)/.installed

# The exact versions of constraints.txt (the ranges of pyproject.toml, resolved by `make lock`);
# reinstalled only when either file changes.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

repro: install
	dvc repro

# one pytest-xdist worker per CPU core (tests/conftest.py shares the cores' threads among them)
test: install
	python -m pytest -q -n auto

# constraints.txt afresh: pyproject.toml's ranges resolved to the newest versions pip finds, in a throwaway
# venv and without installing anything (.venv is untouched until the next `make install`)
LOCK_VENV := $(CURDIR)/.lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --dry-run --ignore-installed \
		--report $(LOCK_VENV)/report.json -e '.[dev]'
	$(LOCK_VENV)/bin/python .ci/lock.py $(LOCK_VENV)/report.json constraints.txt
	rm -rf $(LOCK_VENV)

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
