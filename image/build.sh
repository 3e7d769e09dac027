#!/usr/bin/env bash
# `make image`: build the image from the Dockerfile, write a `docker load` archive and the SBOM
# beside it. Where a Docker engine answers, Docker builds from the public python image; else
# buildah does, from the public image when a registry answers and from a local Debian base made
# by image/base.sh (mmdebstrap) when none does.
#
# Environment (all optional): IMAGE (name:tag), ARCH (amd64, arm64; default: the builder's),
# OUT (default dist), REVISION, SOURCE, VERSION, CA_BUNDLE (a CA bundle pip trusts, mounted as
# the build secret `ca`), PYTHON_IMAGE (skip the choice of base), BUILDER (docker|buildah).
set -euo pipefail
cd "$(dirname "$0")/.."

PUBLIC_BASE=python:3.11-slim-bookworm
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
IMAGE=${IMAGE:-tiergate:$VERSION}
OUT=${OUT:-dist}
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
SOURCE=${SOURCE:-$(git config --get remote.origin.url 2>/dev/null || echo unknown)}

default_arch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) uname -m ;;
  esac
}
ARCH=${ARCH:-$(default_arch)}

first_ca_bundle() {
  for candidate in "${SSL_CERT_FILE:-}" "${PIP_CERT:-}" /etc/ssl/certs/ca-certificates.crt \
    /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
    if [ -n "$candidate" ] && [ -s "$candidate" ]; then
      echo "$candidate"
      return
    fi
  done
}
CA_BUNDLE=${CA_BUNDLE:-$(first_ca_bundle)}

choose_builder() {
  if command -v buildah >/dev/null && command -v podman >/dev/null; then
    echo buildah
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    echo docker
  else
    echo "image/build.sh: neither buildah+podman nor a Docker engine; \`make image-tools\` installs them" >&2
    exit 1
  fi
}
BUILDER=${BUILDER:-$(choose_builder)}

registry_answers() {
  timeout 20 skopeo inspect --override-arch "$ARCH" "docker://docker.io/library/$PUBLIC_BASE" >/dev/null 2>&1
}

choose_base() {
  if [ "$BUILDER" = docker ] || podman image exists "$PUBLIC_BASE" || registry_answers; then
    echo "$PUBLIC_BASE"
  else
    echo "image/build.sh: no registry answers; building on a local Debian base" >&2
    image/base.sh "$ARCH"
  fi
}
PYTHON_IMAGE=${PYTHON_IMAGE:-$(choose_base)}

mkdir -p "$OUT"
args=(
  --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg "VERSION=$VERSION"
  --build-arg "REVISION=$REVISION" --build-arg "SOURCE=$SOURCE"
  --platform "linux/$ARCH" --iidfile "$OUT/tiergate-image.id.new" --tag "$IMAGE"
)
if [ -n "$CA_BUNDLE" ]; then
  args+=(--secret "id=ca,src=$CA_BUNDLE")
fi

echo "image/build.sh: $IMAGE for linux/$ARCH with $BUILDER on $PYTHON_IMAGE" >&2
if [ "$BUILDER" = docker ]; then
  DOCKER_BUILDKIT=1 docker build "${args[@]}" .
  ENGINE=docker
else
  buildah bud --isolation chroot --format docker --layers "${args[@]}" .
  ENGINE=podman
fi

# The archive and the SBOM only when the image changed: a rebuild with no change stops here.
id=$(cat "$OUT/tiergate-image.id.new")
if [ -f "$OUT/tiergate-image.id" ] && [ "$(cat "$OUT/tiergate-image.id")" = "$id" ] \
  && [ -s "$OUT/tiergate-image.tar" ] && [ -s "$OUT/tiergate-image.cdx.json" ]; then
  mv "$OUT/tiergate-image.id.new" "$OUT/tiergate-image.id"
  echo "image/build.sh: $IMAGE unchanged ($id)" >&2
  exit 0
fi
if [ "$ENGINE" = podman ]; then
  container=$(podman create --no-healthcheck "$id")  # no systemd timer for a container never run
else
  container=$(docker create "$id")
fi
trap '$ENGINE rm -v "$container" >/dev/null 2>&1' EXIT
$ENGINE cp "$container:/opt/tiergate/sbom.cdx.json" "$OUT/tiergate-image.cdx.json"
rm -f "$OUT/tiergate-image.tar"
if [ "$ENGINE" = docker ]; then
  docker save -o "$OUT/tiergate-image.tar" "$IMAGE"
else
  podman save --quiet --format docker-archive -o "$OUT/tiergate-image.tar" "$IMAGE"
fi
# The image this one replaces under the same tag is left untagged: remove it, so rebuilds do not
# fill the store (a container still using it keeps it; its build cache stays with the new one).
if [ -f "$OUT/tiergate-image.id" ] && [ "$(cat "$OUT/tiergate-image.id")" != "$id" ]; then
  $ENGINE rmi "$(cat "$OUT/tiergate-image.id")" >/dev/null 2>&1 || true
fi
mv "$OUT/tiergate-image.id.new" "$OUT/tiergate-image.id"
echo "image/build.sh: $IMAGE ($id): $OUT/tiergate-image.tar, $OUT/tiergate-image.cdx.json" >&2
