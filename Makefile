# tiergate: `make demo` runs the local stack, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check --quiet

# The container image: `make image` (see docs/kubernetes.md); ARCH=arm64 for the other platform.
ARCH ?=
IMAGE ?=

.PHONY: venv lock audit dist nginx promtool chromium image image-tools image-for-tests test check lint typecheck rego typescript pytest demo fmt bench chart-sync clean

venv: $(STAMP)

# Every third-party package from the lock, hashes required (docs/adr/0025); then this repository's
# two projects, editable, without dependencies: the lock already holds them all.
$(STAMP): pyproject.toml clients/python/pyproject.toml requirements/dev.txt requirements/opa-reference.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --require-hashes -r requirements/dev.txt
	$(PIP) install --require-hashes --no-deps --ignore-requires-python -r requirements/opa-reference.txt
	$(PIP) install --no-deps --no-build-isolation -e clients/python -e .
	# xds-protos (a dev dependency only: the tests' Envoy client, ADR 29) carries an older copy of
	# OpenTelemetry's protos under the same path; pip installs alphabetically, so put
	# opentelemetry-proto's own files back (its pin and hashes from the lock).
	awk '/^opentelemetry-proto==/{p=1} p{print; if ($$0 !~ /\\$$/) exit}' requirements/dev.txt > $(VENV)/otel-proto.txt
	$(PIP) install --require-hashes --no-deps --force-reinstall -r $(VENV)/otel-proto.txt
	touch $(STAMP)

# Refresh the lock after a change to a dependency in pyproject.toml or clients/python/pyproject.toml
# (upgrade everything: make lock UPGRADE=--upgrade). One universal resolution for Python 3.11 on
# every platform, each pin with the hashes of all its published files.
UPGRADE ?=
COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--no-emit-package tiergate-client --custom-compile-command "make lock" $(UPGRADE)
lock:
	test -x $(BIN)/uv || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); $(PIP) install 'uv~=0.13.10'; }
	$(COMPILE) pyproject.toml --extra otel requirements/runtime.in -o requirements/runtime.txt
	$(COMPILE) pyproject.toml --extra dev requirements/dev.in -o requirements/dev.txt
	$(COMPILE) requirements/client.in -o requirements/client.txt
	$(COMPILE) requirements/client-gates.in -o requirements/client-gates.txt

# Known vulnerabilities in the locked sets (pip-audit). It needs advisory data from the network
# (PyPI's per-release JSON API or OSV); where neither answers it stops and says so.
AUDIT_SERVICE ?= pypi
AUDITED := requirements/runtime.txt requirements/dev.txt requirements/client-gates.txt
audit: venv
	@for lock in $(AUDITED); do echo "pip-audit $$lock"; \
	  $(BIN)/pip-audit --strict --disable-pip --require-hashes --progress-spinner off --vulnerability-service $(AUDIT_SERVICE) -r $$lock || { \
	  echo "make audit: $$lock has known vulnerabilities or could not be checked (above). pip-audit needs"; \
	  echo "advisory data from the network: PyPI's per-release JSON API, or OSV (AUDIT_SERVICE=osv); it has"; \
	  echo "no offline database. Where neither answers, every package shows as 'could not be audited'."; \
	  exit 1; }; done

# The two wheels and sdists: tiergate (the servers) and tiergate-client (clients and gates alone).
dist: venv
	rm -f dist/*.whl dist/*.tar.gz
	$(BIN)/python -m build --no-isolation --outdir dist clients/python
	$(BIN)/python -m build --no-isolation --outdir dist .

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

pytest: venv typescript nginx promtool chromium image-for-tests
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

# The image, built without a registry when none answers (image/build.sh, docs/kubernetes.md):
# dist/tiergate-image.tar (`docker load`), dist/tiergate-image.cdx.json (its SBOM) and
# dist/tiergate-image.id. The build tools come from Debian's packages, installed when missing.
image: image-tools
	ARCH=$(ARCH) IMAGE=$(IMAGE) image/build.sh

IMAGE_TOOLS := buildah podman mmdebstrap runc skopeo uidmap fuse-overlayfs
IMAGE_TOOLS_ARM64 := qemu-user-static binfmt-support arch-test
image-tools:
	@missing=$$(for p in $(IMAGE_TOOLS) $(if $(filter arm64,$(ARCH)),$(IMAGE_TOOLS_ARM64)); do \
	  dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -z "$$missing" ]; then :; \
	elif ! command -v apt-get >/dev/null; then \
	  if command -v docker >/dev/null; then :; else echo "image: no apt-get; install $$missing (or Docker)"; exit 1; fi; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; fi

# `make test` builds the image and tests/integration/image runs it; where the tools cannot be
# installed (no apt-get and no podman) the image tests skip and say so.
image-for-tests:
	@if command -v podman >/dev/null || command -v apt-get >/dev/null; then $(MAKE) --no-print-directory image; \
	else echo "image: no podman and no apt-get here; the image tests will skip"; fi

# Debian's prometheus package for promtool: tests/integration/chart checks the chart's PrometheusRule
# with `promtool check rules` and runs its unit tests (`promtool test rules`). Installed when missing
# and apt-get is usable; else those tests skip and say so. The tests use only the promtool binary.
promtool:
	@if command -v promtool >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then echo "promtool: no apt-get here; install prometheus to run the alert tests"; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus \
	  || echo "promtool: apt-get install prometheus failed; the alert tests will skip"; fi

# Debian's Chromium for the console's browser test (tests/integration/console), driven by Playwright
# from PyPI (a dev dependency); Playwright's own browser downloads are never used. Installed when
# missing and apt-get is usable, like nginx; else that test skips and says so.
chromium:
	@if test -x /usr/bin/chromium; then :; \
	elif ! command -v apt-get >/dev/null; then echo "chromium: no apt-get here; install chromium to run the browser test"; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium \
	  || echo "chromium: apt-get install chromium failed; the browser test will skip"; fi

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
	rm -rf dist $(VENV) .state .mypy_cache .ruff_cache .pytest_cache $(TS)/node_modules $(TS)/dist
