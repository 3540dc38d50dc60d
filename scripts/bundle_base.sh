#!/usr/bin/env bash
# The base image every llmdeploy image builds FROM: a minimal Debian root filesystem made with debootstrap from
# the configured Debian mirror and `docker import`ed, so no image is ever pulled from a registry.
#
#   scripts/bundle_base.sh [TAG]        # default llmdeploy-base:<codename of this machine>
#
# Inputs (pinned by the environment, printed to stdout and written into the image's labels):
#   DEBIAN_SUITE   the release (default: VERSION_CODENAME from /etc/os-release)
#   DEBIAN_MIRROR  the mirror (default: the first deb.debian.org-style URI in /etc/apt/sources.list*)
#   DEBIAN_SNAPSHOT  optional snapshot.debian.org timestamp (e.g. 20250520T000000Z): pins every package version
# Reuses an existing image with the same tag unless FORCE=1 (CI builds it once per run).
set -euo pipefail

. /etc/os-release
SUITE=${DEBIAN_SUITE:-$VERSION_CODENAME}
TAG=${1:-llmdeploy-base:$SUITE}
if [ -n "${DEBIAN_SNAPSHOT:-}" ]; then
  MIRROR=http://snapshot.debian.org/archive/debian/$DEBIAN_SNAPSHOT
  SECURITY=http://snapshot.debian.org/archive/debian-security/$DEBIAN_SNAPSHOT
else
  first_uri() {
    # deb822 (URIs:) and one-line (deb URI suite ...) sources alike.
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\).*/\2/p' \
      | grep -v -- "-security" | head -n1 || true
  }
  MIRROR=${DEBIAN_MIRROR:-$(first_uri)}
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  SECURITY=${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}
fi

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base: $TAG exists ($(docker image inspect -f '{{.Id}}' "$TAG"))"
  exit 0
fi

command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
ROOTFS=$(mktemp -d /tmp/llmdeploy-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

echo "base: debootstrap $SUITE from $MIRROR"
# minbase: essential + apt only; the images add what they need from Debian packages.
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" >/tmp/llmdeploy-debootstrap.log 2>&1 \
  || { tail -n 30 /tmp/llmdeploy-debootstrap.log >&2; exit 1; }

# The image's apt sources: the same mirror, with updates and security, so `apt-get install` in the Dockerfiles
# reads exactly what debootstrap read.
cat >"$ROOTFS/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
SRC
# Small images: no docs, no man pages, no apt caches (as the official slim images do).
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-nodoc" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
CFG
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$ROOTFS/etc/apt/apt.conf.d/01-norecommends"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log

# --numeric-owner: ownership as inside the root filesystem, not mapped through this machine's names.
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["bash"]' \
  --change "LABEL org.llmdeploy.debian.suite=$SUITE org.llmdeploy.debian.mirror=$MIRROR" \
  - "$TAG" >/dev/null
echo "base: $TAG imported ($(docker image inspect -f '{{.Id}} {{.Size}}' "$TAG"))"
