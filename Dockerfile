# syntax=docker/dockerfile:1
# One image for both roles: `tiergate sidecar` (the default CMD) and `tiergate sync-daemon`.
#
#   make image                  # podman/buildah (no registry needed) or Docker; docs/kubernetes.md
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t tiergate:0.4.0 .
#   docker run --read-only -v tiergate-state:/var/lib/tiergate tiergate:0.4.0            # sidecar
#   docker run --read-only -v tiergate-state:/var/lib/tiergate -e TIERGATE_DAEMON_HOST=0.0.0.0 \
#       -e TIERGATE_STRIPE_API_KEY=... -e TIERGATE_STRIPE_WEBHOOK_SECRET=... -e TIERGATE_FEED_TOKEN=... \
#       -p 9190:9190 tiergate:0.4.0 sync-daemon
#
# It builds for the builder's platform (linux/amd64, linux/arm64). PYTHON_IMAGE is any Debian
# bookworm with python3.11 and python3-venv: the public python image, or the local base that
# `make image` makes with mmdebstrap where no registry is reachable.
#
# The optional build secret `ca` is a CA bundle pip trusts (a TLS-inspecting proxy): it is mounted
# for the RUN steps that download and never lands in a layer.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtualenv with the pinned engine and the project (no dev extras), and its SBOM ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# The SBOM tool in a virtualenv of its own: it describes the image's environment, it is not in it.
COPY requirements/sbom.txt requirements/sbom.txt
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/sbom-tool \
    && /opt/sbom-tool/bin/pip install --require-hashes --no-deps -r requirements/sbom.txt

RUN python3 -m venv /opt/tiergate
ENV PATH=/opt/tiergate/bin:$PATH

# Every runtime dependency from the lock, the otel extra's included (tracing needs no rebuild),
# hashes required (docs/adr/0025), then this repository's
# two projects without dependencies: tiergate-client (the clients and the core models) and tiergate.
COPY requirements/runtime.txt requirements/runtime.txt
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --require-hashes --no-deps -r requirements/runtime.txt

COPY pyproject.toml README.md LICENSE ./
COPY clients/python/ clients/python/
COPY tiergate/ tiergate/
# A regular (not editable) install; pip byte-compiles here, so the read-only runtime never
# needs to write a .pyc. Then the CycloneDX SBOM of the environment, kept inside it.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-deps ./clients/python . \
    && tiergate --version \
    && /opt/sbom-tool/bin/cyclonedx-py environment --pyproject pyproject.toml --mc-type application \
       --output-format JSON --output-file /opt/tiergate/sbom.cdx.json /opt/tiergate/bin/python

# -- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG TIERGATE_UID=10001

# A fixed, non-root UID/GID (Kubernetes runAsNonRoot needs a numeric user to verify).
RUN groupadd --system --gid "${TIERGATE_UID}" tiergate \
    && useradd --system --uid "${TIERGATE_UID}" --gid tiergate --no-create-home \
       --home-dir /var/lib/tiergate --shell /usr/sbin/nologin tiergate \
    && install -d -o tiergate -g tiergate -m 0750 /var/lib/tiergate

COPY --from=build /opt/tiergate /opt/tiergate
# The sample catalog and policies; mount over /etc/tiergate/plans or /etc/tiergate/policies
# (as directories: the sidecar watches them and hot-reloads) to use your own.
COPY plans/plans.yaml /etc/tiergate/plans/plans.yaml
COPY policies/ /etc/tiergate/policies/

# State lives only under /var/lib/tiergate (a volume): the root filesystem can be read-only.
ENV PATH=/opt/tiergate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/tiergate \
    TIERGATE_PLANS=/etc/tiergate/plans/plans.yaml \
    TIERGATE_POLICIES=/etc/tiergate/policies \
    TIERGATE_REPLICA_PATH=/var/lib/tiergate/replica.db \
    TIERGATE_MIRROR_PATH=/var/lib/tiergate/mirror.db

VOLUME ["/var/lib/tiergate"]
WORKDIR /var/lib/tiergate
USER ${TIERGATE_UID}:${TIERGATE_UID}

# Every port a process opens by default: 9190 sync daemon; sidecar 9191 (HTTP API, 127.0.0.1 by
# default), 9192 authz-only listener, 9193 gRPC ext_authz, 9194 diagnostics (each only when its
# TIERGATE_*_HOST is set). The check listener has no default port (TIERGATE_CHECK_PORT).
EXPOSE 9190 9191 9192 9193 9194

# Works for both roles: PID 1's command line tells which one runs, and the role's port variable
# (or its default) where its /healthz is. Any error or non-2xx answer exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; d = b'sync-daemon' in open('/proc/1/cmdline', 'rb').read(); p = os.environ.get('TIERGATE_DAEMON_PORT' if d else 'TIERGATE_SIDECAR_PORT') or ('9190' if d else '9191'); u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=3)"]

ENTRYPOINT ["tiergate"]
CMD ["sidecar"]

# Last, so that a new revision changes one metadata layer. `make image` sets them: VERSION from
# pyproject.toml, REVISION from `git rev-parse HEAD`, SOURCE from the repository's remote.
ARG VERSION=0.4.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="tiergate" \
      org.opencontainers.image.description="Stripe billing turned into fast, local allow/deny answers: sync daemon and sidecar" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
