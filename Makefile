# tiergate: `make demo` runs the local stack, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check --quiet

.PHONY: venv nginx test check lint typecheck rego typescript pytest demo fmt bench chart-sync clean

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

# The TypeScript client: dependencies from its lockfile, types generated from tiergate/sidecar/openapi.yaml,
# compiled with its tests (pytest runs them with Node's test runner against a real sidecar).
TS := clients/typescript
NPM := npm --prefix $(TS) --no-audit --no-fund --loglevel=error

typescript: $(TS)/node_modules/.installed
	$(NPM) run build

$(TS)/node_modules/.installed: $(TS)/package-lock.json
	command -v npm >/dev/null || { apt-get update && apt-get install -y nodejs npm; }
	$(NPM) ci
	touch $@

pytest: venv typescript nginx
	$(BIN)/pytest -q

# Debian's nginx for tests/integration/ingress (the shipped deploy/nginx configs run in front of a real
# sidecar). Installed when missing and apt-get is usable (root, or sudo without a password); else the
# tests skip and say so. The package does not start a service of its own: the tests run private ones.
nginx:
	@if command -v nginx >/dev/null || test -x /usr/sbin/nginx; then :; \
	elif ! command -v apt-get >/dev/null; then echo "nginx: no apt-get here; install nginx to run the ingress tests"; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nginx \
	  || echo "nginx: apt-get install nginx failed; the ingress tests will skip"; fi

demo: venv
	$(BIN)/python -m demo

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv  # the headline set with short settings; bench/README.md lists every benchmark
	$(BIN)/python bench/sidecar_latency.py --quick
	$(BIN)/python bench/sync_bench.py all --quick
	$(BIN)/python bench/usage_bench.py --quick

chart-sync:
	cp plans/plans.yaml charts/tiergate/files/plans.yaml
	find policies -maxdepth 1 -name '*.rego' ! -name '*_test.rego' -exec cp {} charts/tiergate/files/policies/ \;

clean:
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache $(TS)/node_modules $(TS)/dist
