# `make demo` and `make test` each set up .venv (torch==2.13.0 first, then saekit with its extras) and run.
# `make test` runs the whole suite under coverage (every process it starts counts: workers, torchrun ranks, the
# CLI, notebook kernels), prints the in-process share, the table, and fails below the floor in pyproject.toml;
# `make coverage` is its name too. `make test KEEP_COVERAGE=1` keeps each process's data file (.coverage.*).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.saekit-installed

INTEROP ?= .venv-interop
INTEROP_STAMP := $(INTEROP)/.installed

COVERAGE := $(BIN)/python -m coverage

.PHONY: demo test coverage test-quick test-plain bench clean interop-env lock audit lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,gguf]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/saekit demo

test: $(STAMP)
	@rm -f .coverage .coverage.* .coverage-pytest-pid
	SAEKIT_COVERAGE_PID_FILE=.coverage-pytest-pid $(COVERAGE) run -m pytest; tests=$$?; \
	pid=$$(cat .coverage-pytest-pid 2>/dev/null); \
	main=$$(ls .coverage.*.pid$$pid.* .coverage.*.$$pid.* 2>/dev/null | head -1); \
	if [ -n "$$main" ]; then printf "in-process only (what a plain pytest --cov sees): %s%%\n" \
		"$$($(COVERAGE) report --data-file=$$main --format=total --fail-under=0 2>/dev/null)"; fi; \
	$(COVERAGE) combine -q --keep; \
	$(COVERAGE) report --sort=cover; floor=$$?; \
	[ -n "$(KEEP_COVERAGE)" ] || rm -f .coverage.* .coverage-pytest-pid; \
	exit $$(( tests ? tests : floor ))

coverage: test

test-plain: $(STAMP)
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

# requirements.lock: every package of the test environment at its installed version (torch without its +cpu tag)
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^saekit' | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/' \
		| sort -f > requirements.lock

# pyflakes, pycodestyle and bugbear over the package, then the type checker (the settings are in pyproject.toml)
lint: $(STAMP)
	$(BIN)/python -m ruff check saekit
	$(BIN)/python -m mypy

# fails on a locked package with a known vulnerability that has a fixed release (see tools/audit.py)
audit: $(STAMP)
	$(BIN)/python tools/audit.py --lock requirements.lock

clean:
	rm -rf $(VENV) $(INTEROP) saekit-workspace *.egg-info .coverage .coverage.*
