# `make test` and `make demo` work on a fresh machine with nothing but Python 3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install whenever the dependency declarations or the C extension sources change.
$(STAMP): $(BIN)/python pyproject.toml setup.py constraints.txt $(wildcard runtime/ops/*.c)
	$(BIN)/pip install --upgrade -q pip
	$(BIN)/pip install -q -c constraints.txt -e '.[cpu,dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
