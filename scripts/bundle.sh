#!/usr/bin/env bash
# `make bundle`: everything an install with no network needs, in one directory and one tarball.
#
#   scripts/bundle.sh [OUT_DIR]            # default build/bundle
#
# Needs, on this machine: Debian (the release the images are built from), debootstrap, docker, the package indexes
# pip is configured with, and Debian's mirror. Writes OUT_DIR/llmdeploy-bundle-<commit>/ and beside it
# llmdeploy-bundle-<commit>.tar with llmdeploy-bundle-<commit>.tar.sha256. Inside:
#   install.sh                  verifies SHA256SUMS, loads the images, writes .env and a certificate if missing, starts
#   SHA256SUMS                  every other file's sha256
#   MANIFEST                    every input, pinned: commit, Debian release/mirror, base image id, Python, pip, images
#   python/                     console.lock.txt, ml.lock.txt, ml-cuda.lock.txt (resolved only) and pip's reports
#   wheels/console, wheels/ml   the wheels of both environments (ml: the CPU build of torch)
#   images/llmdeploy-images.tar `docker save` of llmdeploy-base, -postgres, -redis, -proxy, -console, -prometheus,
#                               llmdeploy/ml
#   debs/                       Debian packages for the install host: docker.io, docker-compose, openssl and their
#                               dependencies beyond a minimal Debian, a flat apt repository (scripts/bundle_debs.sh);
#                               install.sh installs from it only what the host lacks
#   debian/<image>.packages     every Debian package (name, version, architecture) in each image
#   compose/                    docker-compose.yml, .env.example, deploy/nginx, deploy/monitoring (Grafana, Prometheus)
# Each environment is resolved twice and the two reports compared (scripts/bundle_wheels.py): a difference stops it.
# Set SKIP_ML=1 to leave the ML environment and image out (a console-only bundle), SKIP_DEBS=1 to leave debs/ out (for
# hosts that install Docker and compose themselves).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/build/bundle}" && cd "${1:-$ROOT/build/bundle}" && pwd)
FULL_COMMIT=$(git -C "$ROOT" rev-parse HEAD)
COMMIT=${FULL_COMMIT:0:12}
# The images come from the commit (git archive); +dirty says the compose files and wheels' inputs were taken from a
# checkout that differs from it.
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no | grep -q . && echo "+dirty" || true)
BUNDLE_NAME=llmdeploy-bundle-$COMMIT$DIRTY
DIR=$OUT/$BUNDLE_NAME
PY=${PYTHON:-$ROOT/.venv/bin/python}
# Absolute: the console target runs it from inside the build context.
case $PY in */*) [[ $PY = /* ]] || PY=$PWD/$PY ;; esac
TAG=${CONSOLE_IMAGE_TAG:-latest}
. /etc/os-release
BASE_IMAGE=${BASE_IMAGE:-llmdeploy-base:$VERSION_CODENAME}
# Wheels and resolver venv survive between bundles (the locks are recomputed every time).
CACHE=${BUNDLE_CACHE:-$ROOT/build/bundle-cache}
start=$SECONDS
step() { echo "[bundle $((SECONDS - start)) s] $*"; }

rm -rf "$DIR" "$OUT/$BUNDLE_NAME.tar" "$OUT/$BUNDLE_NAME.tar.sha256"
mkdir -p "$DIR"/{python,wheels,images,compose/deploy}

ENVS=(console ml)
[ "${SKIP_ML:-0}" = 1 ] && ENVS=(console)
for env in "${ENVS[@]}"; do
  step "resolving and fetching the $env wheels"
  rm -f "$CACHE/$env.lock.txt"
  "$PY" "$ROOT/scripts/bundle_wheels.py" "$env" "$CACHE"
  cp "$CACHE/$env.lock.txt" "$CACHE/$env.report.json" "$DIR/python/"
  # Exactly the lock's wheels (the cache may hold older ones).
  mkdir -p "$DIR/wheels/$env"
  "$PY" - "$CACHE/$env.lock.txt" "$CACHE/wheels/$env" "$DIR/wheels/$env" <<'PY'
import re, shutil, sys
from pathlib import Path
lock, src, dst = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
want = {norm(n): v for n, v in (line.strip().split("==") for line in lock.read_text().splitlines() if line.strip())}
found = 0
for wheel in src.glob("*.whl"):
    name, version = wheel.name.split("-")[:2]
    if want.get(norm(name)) == version:
        shutil.copy2(wheel, dst / wheel.name)
        found += 1
missing = len(want) - found
if missing:
    sys.exit(f"{missing} wheels of {lock.name} are missing in {src}")
PY
done
if [ "${SKIP_ML:-0}" != 1 ]; then
  step "resolving the ML environment's CUDA set (report only)"
  if "$PY" "$ROOT/scripts/bundle_wheels.py" ml-cuda "$CACHE" >"$DIR/python/ml-cuda.resolve.log" 2>&1; then
    cp "$CACHE/ml-cuda.lock.txt" "$CACHE/ml-cuda.report.json" "$DIR/python/"
  else
    echo "ml-cuda: not resolvable from this machine's indexes; see python/ml-cuda.resolve.log" | tee -a "$DIR/python/ml-cuda.resolve.log"
  fi
fi

step "building the images"
targets=(services console monitoring)
[ "${SKIP_ML:-0}" = 1 ] || targets+=(ml)
# The images hold the commit the bundle is named after, not uncommitted work in the checkout.
BUNDLE_SOURCE=$FULL_COMMIT PYTHON=$PY "$ROOT/scripts/bundle_images.sh" "$CACHE" "${targets[@]}"
images=("$BASE_IMAGE" "llmdeploy-postgres:$TAG" "llmdeploy-redis:$TAG" "llmdeploy-proxy:$TAG" "llmdeploy-console:$TAG"
  "llmdeploy-prometheus:$TAG")
[ "${SKIP_ML:-0}" = 1 ] || images+=("llmdeploy/ml:$TAG")
step "recording the Debian packages in each image"
# Without DEBIAN_SNAPSHOT the mirror's versions of the day go in: each image's list says exactly which.
mkdir -p "$DIR/debian"
for image in "${images[@]}"; do
  docker run --rm --network none --user 0 --entrypoint dpkg-query "$image" -W -f '${Package} ${Version} ${Architecture}\n' \
    >"$DIR/debian/$(echo "${image%%:*}" | tr / -).packages"
done
step "saving ${#images[@]} images"
# One archive: layers the images share (the base) are stored once.
docker save -o "$DIR/images/llmdeploy-images.tar" "${images[@]}"

if [ "${SKIP_DEBS:-0}" != 1 ]; then
  step "Debian packages for the install host"
  "$ROOT/scripts/bundle_debs.sh" "$DIR/debs" "$BASE_IMAGE"
fi

step "compose files, monitoring configuration, installer"
cp "$ROOT/docker-compose.yml" "$ROOT/.env.example" "$DIR/compose/"
cp -a "$ROOT/deploy/nginx" "$ROOT/deploy/monitoring" "$ROOT/deploy/make-self-signed-cert.sh" "$DIR/compose/deploy/"
mkdir -p "$DIR/compose/deploy/certs"
cp "$ROOT/deploy/bundle/install.sh" "$DIR/install.sh"
chmod +x "$DIR/install.sh"

{
  echo "bundle: $BUNDLE_NAME"
  echo "commit: $FULL_COMMIT$DIRTY"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $PRETTY_NAME"
  docker image inspect -f 'debian: suite {{index .Config.Labels "org.llmdeploy.debian.suite"}} mirror {{index .Config.Labels "org.llmdeploy.debian.mirror"}}' "$BASE_IMAGE"
  echo "debian snapshot: ${DEBIAN_SNAPSHOT:-none (the current packages of the mirror; set DEBIAN_SNAPSHOT to pin them)}"
  echo "python (images and resolution): $("$CACHE/resolver-venv/bin/python" --version 2>&1), pip $("$CACHE/resolver-venv/bin/python" -m pip --version | cut -d' ' -f2)"
  echo "pip indexes: $("$CACHE/resolver-venv/bin/python" -m pip config list 2>/dev/null | tr '\n' ' ')"
  for env in "${ENVS[@]}"; do echo "$env: $(wc -l <"$DIR/python/$env.lock.txt") pinned distributions (python/$env.lock.txt)"; done
  [ -f "$DIR/python/ml-cuda.lock.txt" ] && echo "ml-cuda: $(wc -l <"$DIR/python/ml-cuda.lock.txt") pinned distributions, resolved only (python/ml-cuda.lock.txt)"
  if [ -f "$DIR/debs/packages.txt" ]; then
    release=$(head -n1 "$DIR/debs/packages.txt" | cut -d' ' -f2-4 | tr -d :)
    wanted=$(grep -E '^(docker\.io|docker-compose|openssl) ' "$DIR/debs/packages.txt" | cut -d' ' -f1,2 | paste -sd, - | sed 's/,/, /g')
    echo "debs: $(grep -vc '^#' "$DIR/debs/packages.txt") packages of $release (debs/packages.txt): $wanted and their dependencies"
  fi
  for image in "${images[@]}"; do echo "image: $image $(docker image inspect -f '{{.Id}}' "$image")"; done
} >"$DIR/MANIFEST"

(cd "$DIR" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum >SHA256SUMS)
step "tarball"
tar -C "$OUT" -cf "$OUT/$BUNDLE_NAME.tar" "$BUNDLE_NAME"
(cd "$OUT" && sha256sum "$BUNDLE_NAME.tar" >"$BUNDLE_NAME.tar.sha256")
step "done: $OUT/$BUNDLE_NAME.tar ($(du -h "$OUT/$BUNDLE_NAME.tar" | cut -f1)); $(du -sh "$DIR/wheels" | cut -f1) wheels, $(du -sh "$DIR/images" | cut -f1) images"
