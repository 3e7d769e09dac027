#!/usr/bin/env bash
# A Debian bookworm base for the Dockerfile (PYTHON_IMAGE) made by mmdebstrap and imported into
# the local container storage, for builds where no registry is reachable. Prints the image name.
#
#   image/base.sh [ARCH]        # ARCH: amd64 (default: the builder's), arm64, ...
#
# The image name carries a key of every input (this script, the suite, the packages, the mirrors,
# the architecture): an unchanged input reuses the image already in storage, in a second.
# DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR point mmdebstrap at another mirror (a corporate one).
set -euo pipefail

ARCH=${1:-$(dpkg --print-architecture)}
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SOURCES=(
  "deb $MIRROR $SUITE main"
  "deb $MIRROR $SUITE-updates main"
  "deb $SECURITY $SUITE-security main"
)

key=$(printf '%s\n' "$ARCH" "$SUITE" "$PACKAGES" "${SOURCES[@]}" | cat - "$0" | sha256sum | cut -c1-12)
name="localhost/tiergate-base:$SUITE-$ARCH-$key"

if podman image exists "$name"; then
  echo "$name"
  exit 0
fi

# Another architecture runs under qemu-user-static: register it with binfmt_misc if it is not yet.
if [ "$ARCH" != "$(dpkg --print-architecture)" ] && ! arch-test "$ARCH" >/dev/null 2>&1; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable >/dev/null 2>&1 || true
  arch-test "$ARCH" >&2 || {
    echo "image/base.sh: this machine cannot run $ARCH programs (qemu-user-static, binfmt_misc)" >&2
    exit 1
  }
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Downloaded packages are kept between bases: a changed input downloads only what changed.
debs=${XDG_CACHE_HOME:-$HOME/.cache}/tiergate/image-debs/$ARCH
mkdir -p "$debs"
echo "image/base.sh: making $name with mmdebstrap (once per input change)" >&2
# minbase: Essential and required packages (passwd for useradd) and apt; merged /usr as Debian's
# own images (no usrmerge, which would pull in perl); no recommends. No docs, man pages or
# translations: nothing at run time reads them (copyright files stay).
mmdebstrap --quiet --variant=minbase --architectures="$ARCH" --include="$PACKAGES" \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --aptopt='APT::Install-Recommends "false"' \
  --skip=essential/unlink \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in $debs /var/cache/apt/archives/" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --customize-hook='chroot "$1" python3 -c "import sys, venv; assert sys.version_info[:2] == (3, 11), sys.version"' \
  --customize-hook="sync-out /var/cache/apt/archives $debs" \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
  "$SUITE" "$work/base.tar" "${SOURCES[@]}" >&2
podman import --quiet --arch "$ARCH" --os linux \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
  "$work/base.tar" "$name" >/dev/null
echo "$name"
