#!/usr/bin/env bash
# The Debian packages an install host with no network needs to run the bundle: the Docker engine and compose
# (docker.io, docker-compose) and openssl (install.sh's self-signed certificate), with every dependency they have
# beyond a minimal Debian (its Essential packages and apt), as a local apt repository.
#
#   scripts/bundle_debs.sh OUT_DIR [BASE_IMAGE]      # default BASE_IMAGE llmdeploy-base:<codename of this machine>
#
# Runs in a container of the bundle's own Debian base (scripts/bundle_base.sh builds it when missing), so the packages
# come from the same mirror and release as the images (DEBIAN_SNAPSHOT pins both). The container is first cut down to
# Essential + apt, then `apt-get install --download-only` fetches the closure. OUT_DIR (emptied) then holds
#   *.deb           the packages
#   Packages        their index (apt-ftparchive): OUT_DIR is a flat repository, `deb [trusted=yes] file:OUT_DIR ./`
#   packages.txt    name version architecture of each, sorted; the first line names the release and architecture
# install.sh installs from it only what the host lacks (deploy/bundle/install.sh, install_packages). BUNDLE_DEBS
# overrides the list of wanted packages (default: docker.io docker-compose openssl).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: $0 OUT_DIR [BASE_IMAGE]}
. /etc/os-release
BASE_IMAGE=${2:-${BASE_IMAGE:-llmdeploy-base:$VERSION_CODENAME}}
# What the host needs; their dependencies follow.
PACKAGES=${BUNDLE_DEBS:-docker.io docker-compose openssl}

"$ROOT/scripts/bundle_base.sh" "$BASE_IMAGE" >&2
# Emptied only when it is a former output (or empty): a wrong argument must not delete a directory.
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/packages.txt" ]; then
  echo "$OUT is not empty and holds no packages.txt: not a debs directory this script wrote" >&2
  exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
start=$SECONDS

# As the caller, so the files are theirs; apt runs as root inside.
docker run --rm -v "$OUT:/out" -e "PACKAGES=$PACKAGES" -e "OWNER=$(id -u):$(id -g)" "$BASE_IMAGE" bash -euo pipefail -c '
export DEBIAN_FRONTEND=noninteractive
q() { "$@" >/tmp/apt.log 2>&1 || { cat /tmp/apt.log >&2; exit 1; }; }
# A minimal Debian: Essential packages and apt (what debootstrap --variant=minbase installs). Anything the base
# image holds beyond that (ca-certificates, openssl) goes, so the closure does not assume it on the host.
q apt-mark auto $(dpkg-query -W -f "\${Package}\n")
q apt-mark manual apt
# (apt recommends ca-certificates: recommendations must not keep anything either.)
q apt-get autoremove --purge -y -o APT::AutoRemove::RecommendsImportant=false -o APT::AutoRemove::SuggestsImportant=false
q apt-get update
mkdir -p /tmp/debs/partial
q apt-get install -y --download-only --no-install-recommends -o Dir::Cache::archives=/tmp/debs $PACKAGES
# The index, with apt-ftparchive (apt-utils, installed after the download so it is not counted as present).
q apt-get install -y --no-install-recommends apt-utils
cd /tmp/debs
cp *.deb /out/
cd /out
apt-ftparchive packages . >Packages
{
  echo "# debian $(. /etc/os-release && echo "$VERSION_CODENAME") $(dpkg --print-architecture): $PACKAGES and their dependencies beyond Essential + apt"
  for deb in *.deb; do dpkg-deb -W --showformat "\${Package} \${Version} \${Architecture}\n" "$deb"; done | LC_ALL=C sort
} >packages.txt
chown -R "$OWNER" /out
'
count=$(grep -vc '^#' "$OUT/packages.txt")
echo "debs: $count packages ($(du -sh "$OUT" | cut -f1)) in $((SECONDS - start)) s -> $OUT"
