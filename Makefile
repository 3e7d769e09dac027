# tiergate: `make demo` runs the local stack, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check --quiet

.PHONY: venv test check lint typecheck rego typescript pytest demo fmt bench chart-sync clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/engine.txt requirements/opa-reference.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --require-hashes --no-deps -r requirements/engine.txt
	$(PIP) install --require-hashes --no-deps --ignore-requires-python -r requirements/opa-reference.txt
	$(PIP) install -e '.[dev]'
	touch $(STAMP)

test: check

check: lint typecheck rego typescript pytest

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

rego: venv
	$(BIN)/tiergate policies test policies
	$(BIN)/tiergate policies test --engine opa-reference policies
	$(BIN)/tiergate plans check plans/plans.yaml

# The TypeScript client: dependencies from its lockfile, types generated from sidecar/openapi.yaml,
# compiled with its tests (pytest runs them with Node's test runner against a real sidecar).
TS := clients/typescript
NPM := npm --prefix $(TS) --no-audit --no-fund --loglevel=error

typescript: $(TS)/node_modules/.installed
	$(NPM) run build

$(TS)/node_modules/.installed: $(TS)/package-lock.json
	command -v npm >/dev/null || { apt-get update && apt-get install -y nodejs npm; }
	$(NPM) ci
	touch $@

pytest: venv typescript
	$(BIN)/pytest -q

demo: venv
	$(BIN)/python -m demo

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	$(BIN)/python bench/sidecar_latency.py

chart-sync:
	cp plans/plans.yaml charts/tiergate/files/plans.yaml
	find policies -maxdepth 1 -name '*.rego' ! -name '*_test.rego' -exec cp {} charts/tiergate/files/policies/ \;

clean:
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache $(TS)/node_modules $(TS)/dist
