# `make demo` and `make test` each set up .venv (torch==2.13.0 first, then saekit with its extras) and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.saekit-installed

INTEROP ?= .venv-interop
INTEROP_STAMP := $(INTEROP)/.installed

.PHONY: demo test test-quick bench clean interop-env

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,gguf]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/saekit demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser and not heavy" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/registry.py

# the peers' own packages (sae-lens, eai-sparsify) in an environment of their own, for tests/interop
$(INTEROP_STAMP):
	$(PYTHON) -m venv $(INTEROP)
	$(INTEROP)/bin/python -m pip install --quiet torch==2.13.0
	$(INTEROP)/bin/python -m pip install --quiet sae-lens eai-sparsify
	touch $(INTEROP_STAMP)

interop-env: $(INTEROP_STAMP)

clean:
	rm -rf $(VENV) $(INTEROP) saekit-workspace *.egg-info
