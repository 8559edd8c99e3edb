# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install, run the comparison demo
#   make test   the whole check: generated code, lint, the test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo serve test pytest test-ts lint check-gen gen services bench clean

setup: $(STAMP) node_modules/.installed

# The client is its own distribution (clients/python); the server requires it,
# and pip takes it from the checkout when both are named here.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./clients/python -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(STAMP)
	$(VENV)/bin/skill-router demo

serve: $(STAMP)
	$(VENV)/bin/skill-router serve --demo

gen: setup
	bash scripts/gen-proto.sh

check-gen: setup
	bash scripts/check-gen.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check router clients tests bench

# PostgreSQL and Redis on 127.0.0.1 for the metrics-store and shared-state tests (installs them when missing).
services:
	bash scripts/services.sh

# The TypeScript client's tests run first so the suite's closing line is pytest's.
test: setup check-gen lint services test-ts
	set -a; [ -f .services.env ] && . ./.services.env; set +a; \
	$(VENV)/bin/pytest -q -p no:cacheprovider

# The TypeScript client (for the Next.js app) against the real sidecar.
test-ts: $(STAMP)
	cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error
	bash scripts/check-gen-ts.sh
	cd clients/typescript && npm test

pytest: $(STAMP)
	set -a; [ -f .services.env ] && . ./.services.env; set +a; \
	$(VENV)/bin/pytest -q -p no:cacheprovider $(ARGS)

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) node_modules .pytest_cache
