# syntax=docker/dockerfile:1
# One image for both roles: `tiergate sidecar` (the default CMD) and `tiergate sync-daemon`.
#
#   docker build -t tiergate:0.4.0 .
#   docker run --read-only -v tiergate-state:/var/lib/tiergate tiergate:0.4.0            # sidecar
#   docker run --read-only -v tiergate-state:/var/lib/tiergate -e TIERGATE_DAEMON_HOST=0.0.0.0 \
#       -e TIERGATE_STRIPE_API_KEY=... -e TIERGATE_STRIPE_WEBHOOK_SECRET=... -e TIERGATE_FEED_TOKEN=... \
#       -p 9190:9190 tiergate:0.4.0 sync-daemon
#
# The embedded Rego engine (gordon-to-regorus) publishes an x86_64 manylinux_2_34 wheel only, so
# the image is linux/amd64 (Debian bookworm's glibc 2.36 satisfies manylinux_2_34).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtualenv with the pinned engine and the project (no dev extras) ---------------
# hadolint ignore=DL3029
FROM --platform=linux/amd64 ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/tiergate
ENV PATH=/opt/tiergate/bin:$PATH

WORKDIR /src
# The engine first, in pip's hash-checking mode, exactly as the Makefile installs it.
COPY requirements/engine.txt requirements/engine.txt
RUN pip install --require-hashes --no-deps -r requirements/engine.txt

COPY pyproject.toml README.md ./
COPY tiergate/ tiergate/
# A regular (not editable) install; pip byte-compiles here, so the read-only runtime never
# needs to write a .pyc.
RUN pip install . \
    && tiergate --version

# -- runtime -------------------------------------------------------------------------------
# hadolint ignore=DL3029
FROM --platform=linux/amd64 ${PYTHON_IMAGE}

ARG TIERGATE_UID=10001
LABEL org.opencontainers.image.title="tiergate" \
      org.opencontainers.image.description="Stripe billing turned into fast, local allow/deny answers: sync daemon and sidecar" \
      org.opencontainers.image.version="0.4.0" \
      org.opencontainers.image.licenses="Apache-2.0"

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

# 9190: sync daemon; 9191: sidecar (binds 127.0.0.1 by default: reachable from its own pod only).
EXPOSE 9190 9191

# Works for both roles: PID 1's command line tells which one runs, and the role's port variable
# (or its default) where its /healthz is. Any error or non-2xx answer exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; d = b'sync-daemon' in open('/proc/1/cmdline', 'rb').read(); p = os.environ.get('TIERGATE_DAEMON_PORT' if d else 'TIERGATE_SIDECAR_PORT') or ('9190' if d else '9191'); u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=3)"]

ENTRYPOINT ["tiergate"]
CMD ["sidecar"]
