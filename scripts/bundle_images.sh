#!/usr/bin/env bash
# Build every image of the stack from the bundle's own Debian base, with nothing pulled from a registry:
#
#   scripts/bundle_images.sh WHEELS_DIR [console|services|monitoring|ml ...]     # default: console services
#
# WHEELS_DIR is what scripts/bundle_wheels.py wrote (console.lock.txt, wheels/console, and for ml: ml.lock.txt,
# wheels/ml). Images: llmdeploy-console, llmdeploy-postgres, llmdeploy-redis, llmdeploy-proxy (`services`) and
# llmdeploy-prometheus (`monitoring`: Debian's Prometheus with deploy/monitoring's config and rules) and
# llmdeploy/ml (`ml`, the CPU build), each tagged $CONSOLE_IMAGE_TAG (default latest). The build context is a copy of
# the files git knows (tracked and untracked-not-ignored), so nothing local (.env, .venv, data) reaches an image;
# BUNDLE_SOURCE=<commit> builds from that commit alone (git archive), as `make bundle` does.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHEELS=$(cd "${1:?usage: $0 WHEELS_DIR [console|services|monitoring|ml ...]}" && pwd)
shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(console services)
TAG=${CONSOLE_IMAGE_TAG:-latest}
. /etc/os-release
BASE_IMAGE=${BASE_IMAGE:-llmdeploy-base:$VERSION_CODENAME}
PY=${PYTHON:-python3}
# Absolute: the console target runs it from inside the build context.
case $PY in */*) [[ $PY = /* ]] || PY=$PWD/$PY ;; esac

"$ROOT/scripts/bundle_base.sh" "$BASE_IMAGE"

STAGE=$(mktemp -d /tmp/llmdeploy-context.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
mkdir "$STAGE/tree"
if [ "${BUNDLE_SOURCE:-worktree}" != worktree ]; then
  # A release bundle: exactly that commit, whatever else the checkout holds.
  git -C "$ROOT" archive "$BUNDLE_SOURCE" | tar -C "$STAGE/tree" -x
else
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) \
    | "$PY" -c 'import os, sys; sys.stdout.write("".join(p + "\0" for p in sys.stdin.read().split("\0") if p and os.path.isfile(p)))' \
    | tar -C "$ROOT" --null -T - -c | tar -C "$STAGE/tree" -x
fi

build() {  # build TAG DOCKERFILE CONTEXT
  local start=$SECONDS
  docker build -q --force-rm --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$1" -f "$2" "$3" >/dev/null
  echo "image: $1 built in $((SECONDS - start)) s"
}

for target in "${TARGETS[@]}"; do
  case $target in
    console)
      ctx=$STAGE/console
      cp -a "$STAGE/tree" "$ctx"
      mkdir -p "$ctx/wheels/project"
      cp "$WHEELS/console.lock.txt" "$ctx/wheels/"
      cp -a "$WHEELS/wheels/console" "$ctx/wheels/console"
      # The project's own wheel is built here, where setuptools is at hand; the image installs it with no index.
      (cd "$ctx" && "$PY" -m pip wheel --quiet --no-deps --build-constraint build-constraints.txt --wheel-dir wheels/project . \
        && rm -rf build ./*.egg-info)
      build "llmdeploy-console:$TAG" "$ctx/Dockerfile" "$ctx"
      ;;
    services)
      build "llmdeploy-postgres:$TAG" "$STAGE/tree/deploy/images/postgres/Dockerfile" "$STAGE/tree"
      build "llmdeploy-redis:$TAG" "$STAGE/tree/deploy/images/redis/Dockerfile" "$STAGE/tree"
      build "llmdeploy-proxy:$TAG" "$STAGE/tree/deploy/images/nginx/Dockerfile" "$STAGE/tree"
      ;;
    monitoring)
      build "llmdeploy-prometheus:$TAG" "$STAGE/tree/deploy/monitoring/prometheus/Dockerfile" "$STAGE/tree"
      ;;
    ml)
      ctx=$STAGE/ml-context
      mkdir -p "$ctx/wheels" "$ctx/workers" "$ctx/deploy"
      cp -a "$STAGE/tree/Dockerfile.ml" "$STAGE/tree/requirements-ml.txt" "$ctx/"
      cp -a "$STAGE/tree/workers/__init__.py" "$STAGE/tree/workers/jobs" "$ctx/workers/"
      cp -a "$STAGE/tree/deploy/ml" "$ctx/deploy/ml"
      cp "$WHEELS/ml.lock.txt" "$ctx/wheels/"
      cp -a "$WHEELS/wheels/ml" "$ctx/wheels/ml"
      build "llmdeploy/ml:$TAG" "$ctx/Dockerfile.ml" "$ctx"
      ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
  esac
done
