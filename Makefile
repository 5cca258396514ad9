# `make test` and `make demo` work on a fresh machine with nothing but Python 3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test sanitize demo ssl-benchmark bench clean

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

# The C ops built with AddressSanitizer + UBSan into build/sanitize (the repository's .so is kept)
# and the property tests against the reference run on that build: prints cases and errors.
sanitize: $(STAMP)
	$(BIN)/python -m tools.sanitize

# The short smoke run of the whole chain; the semi-supervised benchmark is `make ssl-benchmark`.
DEMO_STAGES := evaluate evaluate_baseline export segment_demo benchmark

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro $(DEMO_STAGES)
	$(BIN)/python -m tools.report --demo-summary

# Hours on 2 cores: every row checkpoints and resumes, so run it again to continue where it stopped.
ssl-benchmark: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro ssl_aggregate

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
