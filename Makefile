# `make demo` and `make test` each set up .venv (torch==2.13.0 first, then saekit with its extras) and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.saekit-installed

.PHONY: demo test test-quick bench clean

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
	$(BIN)/python -m pytest -m "not slow and not browser"

bench: $(STAMP)
	$(BIN)/python benchmarks/registry.py

clean:
	rm -rf $(VENV) saekit-workspace *.egg-info
