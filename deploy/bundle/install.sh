#!/usr/bin/env bash
# Installs the llmdeploy console from this bundle with no network (scripts/bundle.sh made it):
#
#   sudo ./install.sh                        # installs into /opt/llmdeploy-console and starts the stack
#   INSTALL_DIR=/srv/console CONSOLE_HOSTNAME=console.mine.internal ./install.sh
#
# 1. verifies every file against SHA256SUMS (a damaged or altered bundle stops here, before anything changes);
# 2. installs from the bundle's debs/ (Debian 12 packages, no network) what the host lacks of docker, docker-compose
#    and openssl; a host that has them (Docker's own packages, the compose plugin) is left alone;
# 3. loads the images (`docker load`): nothing is pulled, nothing is built;
# 4. copies the compose files to INSTALL_DIR, keeping an existing .env and deploy/certs (an upgrade keeps its keys);
# 5. writes .env with freshly generated secrets and a self-signed certificate for CONSOLE_HOSTNAME when missing;
# 6. `docker-compose up -d` (compose v1 or v2), then waits until the proxy answers.
# Needs: docker (dockerd running) and docker-compose or the compose plugin; openssl for the self-signed certificate;
# on Debian 12 (bookworm) run as root, step 2 installs whichever of them is missing.
set -euo pipefail
BUNDLE=$(cd "$(dirname "$0")" && pwd)
INSTALL_DIR=${INSTALL_DIR:-/opt/llmdeploy-console}
WAIT_S=${WAIT_S:-300}
say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

say "verifying checksums"
(cd "$BUNDLE" && sha256sum --check --quiet --strict SHA256SUMS) || die "SHA256SUMS does not match: the bundle is damaged"

have_compose() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; }

# What the host lacks of docker, docker-compose and openssl, installed from debs/: a flat apt repository
# (scripts/bundle_debs.sh) read instead of the host's sources, so nothing is downloaded and only the missing packages
# and the dependencies the host does not have are installed.
install_packages() {
  local missing=() debs=$BUNDLE/debs
  command -v docker >/dev/null || missing+=(docker.io)
  have_compose || missing+=(docker-compose)
  [ -f "$INSTALL_DIR/deploy/certs/tls.crt" ] || command -v openssl >/dev/null || missing+=(openssl)
  [ ${#missing[@]} -gt 0 ] || return 0
  [ -f "$debs/Packages" ] || die "${missing[*]} missing, and this bundle has no debs/: install them from your distribution"
  # packages.txt's first line: "# debian <codename> <architecture>: ..."
  local release arch host_release host_arch
  read -r _ _ release arch _ <"$debs/packages.txt"
  arch=${arch%:}
  host_release=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  host_arch=$(dpkg --print-architecture 2>/dev/null || true)
  command -v apt-get >/dev/null && [ "$host_release" = "$release" ] && [ "$host_arch" = "$arch" ] \
    || die "${missing[*]} missing; the bundle's debs/ are for Debian $release $arch, this host is ${host_release:-not Debian} ${host_arch}: install them from your distribution"
  [ "$(id -u)" = 0 ] || die "${missing[*]} missing: run as root (sudo ./install.sh) to install them from the bundle's debs/"
  say "installing ${missing[*]} from the bundle's debs/ (Debian $release packages, no network)"
  local apt_dir
  apt_dir=$(mktemp -d /tmp/llmdeploy-apt.XXXXXX)
  chmod 755 "$apt_dir"  # apt reads the lists as its own user, _apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/sources.list.d"
  echo "deb [trusted=yes] file:$debs ./" >"$apt_dir/sources.list"
  local apt=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    -o APT::Install-Recommends=false -o APT::Install-Suggests=false)
  if ! { apt-get "${apt[@]}" update && DEBIAN_FRONTEND=noninteractive apt-get "${apt[@]}" install -y "${missing[@]}"; } \
    >"$apt_dir/apt.log" 2>&1; then
    tail -n 30 "$apt_dir/apt.log" >&2
    rm -rf "$apt_dir"
    die "could not install ${missing[*]} from debs/ (apt's output above)"
  fi
  rm -rf "$apt_dir"
  say "installed: $(for p in "${missing[@]}"; do dpkg-query -W -f '${Package} ${Version}  ' "$p"; done)"
}
install_packages

command -v docker >/dev/null || die "docker is not installed (Debian: apt-get install docker.io)"
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
else die "neither docker-compose nor the compose plugin is installed (Debian: apt-get install docker-compose)"; fi
docker info >/dev/null 2>&1 || die "dockerd does not answer (systemctl start docker; journalctl -u docker)"

for image in "$BUNDLE"/images/*.tar; do
  say "loading $(basename "$image")"
  docker load --quiet --input "$image" >/dev/null
done

mkdir -p "$INSTALL_DIR/deploy/certs"
cp "$BUNDLE/compose/docker-compose.yml" "$BUNDLE/compose/.env.example" "$INSTALL_DIR/"
cp -a "$BUNDLE/compose/deploy/nginx" "$BUNDLE/compose/deploy/monitoring" "$BUNDLE/compose/deploy/make-self-signed-cert.sh" \
  "$INSTALL_DIR/deploy/"
cd "$INSTALL_DIR"

secret() { head -c "$1" /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_'; }
if [ ! -f .env ]; then
  host=${CONSOLE_HOSTNAME:-$(hostname -f 2>/dev/null || hostname)}
  say "writing .env for $host with generated secrets (keep a copy with your backups)"
  umask 077
  {
    echo "COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-llmdeploy-console}"
    echo "CONSOLE_HOSTNAME=$host"
    echo "POSTGRES_PASSWORD=$(secret 24)"
    echo "DATABASE_APP_PASSWORD=$(secret 24)"
    echo "SECRET_KEY=$(secret 48)"
    # A Fernet key: 32 random bytes, URL-safe base64 with its padding.
    echo "SECRETS_ENCRYPTION_KEYS=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')"
    echo "AUDIT_CHECKPOINT_KEY=$(secret 32)"
    echo "METRICS_BEARER_TOKEN=$(secret 32)"
  } >.env
  umask 022
fi
# Compose runs the images this bundle loaded, whatever tag an earlier install's .env names.
bundle_tag=$(sed -n 's/^image: llmdeploy-console:\([^ ]*\) .*/\1/p' "$BUNDLE/MANIFEST" 2>/dev/null || true)
if [ -n "$bundle_tag" ] && ! grep -qx "CONSOLE_IMAGE_TAG=$bundle_tag" .env; then
  sed -i '/^CONSOLE_IMAGE_TAG=/d' .env
  echo "CONSOLE_IMAGE_TAG=$bundle_tag" >>.env
fi
set -a; . ./.env; set +a
if [ ! -f deploy/certs/tls.crt ]; then
  command -v openssl >/dev/null || die "no deploy/certs/tls.crt: copy your certificate and key there, or install openssl"
  say "making a self-signed certificate for $CONSOLE_HOSTNAME (replace it with your CA's: deploy/certs/)"
  deploy/make-self-signed-cert.sh "$CONSOLE_HOSTNAME" >/dev/null 2>"$INSTALL_DIR/.cert.log" \
    || { cat "$INSTALL_DIR/.cert.log" >&2; die "could not make a certificate"; }
  rm -f "$INSTALL_DIR/.cert.log"
fi

say "starting the stack (${COMPOSE[*]})"
"${COMPOSE[@]}" up -d --no-build
say "waiting for the proxy (up to $WAIT_S s)"
deadline=$((SECONDS + WAIT_S))
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q proxy)" 2>/dev/null)" = healthy ]; do
  [ $SECONDS -lt $deadline ] || { "${COMPOSE[@]}" ps; die "the proxy is not healthy after $WAIT_S s"; }
  sleep 3
done
say "running: https://$CONSOLE_HOSTNAME/ (first admin: ${COMPOSE[*]} exec web cat /var/lib/console/initial_admin_password)"
