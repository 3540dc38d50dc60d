#!/usr/bin/env bash
# Offline proof of a bundle (issue 22, Deliver 3): install it and start the stack in a network namespace with no way
# out, with its own dockerd, and count every packet addressed anywhere but the stack's own addresses.
#
#   sudo scripts/bundle_offline_check.sh BUNDLE_DIR [WORK_DIR]
#
# The namespace has loopback and a veth pair (both ends inside) holding the default route: a packet for the outside world is
# really sent (and lost), so nftables sees it, instead of connect() failing before any hook. The dockerd inside has
# its own --data-root, --exec-root and socket (the host's dockerd would create containers outside the namespace).
# nftables counts, in the namespace's output and forward hooks, packets whose destination is not loopback, not the
# namespace's veth address, and not one of the Docker networks the stack creates (172.16.0.0/12, 192.168.0.0/16 by
# Docker's default pools). The check fails unless the install succeeds, the login page answers over HTTPS inside the
# namespace, and the counter reads 0. Prints the install's duration. Cleans up everything it made.
set -euo pipefail
BUNDLE=$(cd "${1:?usage: $0 BUNDLE_DIR [WORK_DIR]}" && pwd)
WORK=${2:-$(mktemp -d /tmp/llmdeploy-offline.XXXXXX)}
NS=llmdeploy-offline-$$
SOCK=$WORK/docker.sock
say() { printf '[offline] %s\n' "$*"; }

cleanup() {
  set +e
  if [ -S "$SOCK" ]; then
    (cd "$WORK/install" 2>/dev/null && DOCKER_HOST=unix://$SOCK docker-compose down --volumes >/dev/null 2>&1)
    DOCKER_HOST=unix://$SOCK docker ps -aq | xargs -r env DOCKER_HOST=unix://$SOCK docker rm -f >/dev/null 2>&1
  fi
  [ -f "$WORK/dockerd.pid" ] && kill "$(cat "$WORK/dockerd.pid")" 2>/dev/null && sleep 5
  ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  umount "$WORK/data/overlay2" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK"

ip netns add "$NS"
# nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts dockerd needs.
nsx() { nsenter --net="/var/run/netns/$NS" "$@"; }
nsx ip link set lo up
# A veth pair with both ends inside: the default route's gateway never answers, so nothing leaves.
nsx ip link add out0 type veth peer name out1
nsx ip addr add 10.254.254.1/30 dev out0
nsx ip link set out0 up
nsx ip link set out1 up
nsx ip route add default via 10.254.254.2
nsx nft -f - <<'NFT'
table inet offline_proof {
    set stack { type ipv4_addr; flags interval; elements = { 127.0.0.0/8, 10.254.254.1, 172.16.0.0/12, 192.168.0.0/16 } }
    # What escaped, by destination, protocol and port: the report names it when the counter is not 0.
    set seen4 { type ipv4_addr . inet_proto . inet_service; flags dynamic; }
    set seen6 { type ipv6_addr . inet_proto . inet_service; flags dynamic; }
    counter escaped { }
    # IGMP membership reports the kernel sends when the bridges come up: link-local multicast (224.0.0.0/24), which no
    # router forwards. Counted apart and reported, not part of `escaped`.
    counter link_local_multicast { }
    chain output {
        type filter hook output priority -200;
        ip daddr 224.0.0.0/24 counter name link_local_multicast drop
        ip daddr != @stack add @seen4 { ip daddr . meta l4proto . th dport } counter name escaped drop
        meta nfproto ipv6 ip6 daddr != ::1 meta l4proto != ipv6-icmp add @seen6 { ip6 daddr . meta l4proto . th dport } counter name escaped drop
    }
    chain forward {
        type filter hook forward priority -200;
        ip daddr 224.0.0.0/24 counter name link_local_multicast drop
        ip daddr != @stack add @seen4 { ip daddr . meta l4proto . th dport } counter name escaped drop
        meta nfproto ipv6 ip6 daddr != ::1 meta l4proto != ipv6-icmp add @seen6 { ip6 daddr . meta l4proto . th dport } counter name escaped drop
    }
}
NFT

say "starting a dockerd inside $NS"
nsx dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" --host "unix://$SOCK" --pidfile "$WORK/dockerd.pid" \
  --containerd-namespace llmdeploy-offline --containerd-plugins-namespace llmdeploy-offline-plugins \
  >"$WORK/dockerd.log" 2>&1 &
export DOCKER_HOST=unix://$SOCK
for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info >/dev/null || { tail -20 "$WORK/dockerd.log"; exit 1; }

start=$SECONDS
say "install.sh (the bundle's own, unchanged)"
nsx env DOCKER_HOST="$DOCKER_HOST" INSTALL_DIR="$WORK/install" CONSOLE_HOSTNAME=console.offline.test \
  COMPOSE_PROJECT_NAME=llmdeploy-offline "$BUNDLE/install.sh"
install_s=$((SECONDS - start))

code=$(nsx curl -sk -o /dev/null -w '%{http_code}' --resolve console.offline.test:443:127.0.0.1 https://console.offline.test/login/)
packets=$(nsx nft list counter inet offline_proof escaped | sed -n 's/.*packets \([0-9]*\).*/\1/p')
multicast=$(nsx nft list counter inet offline_proof link_local_multicast | sed -n 's/.*packets \([0-9]*\).*/\1/p')
say "login page over HTTPS inside the namespace: $code; packets to anything but the stack: $packets" \
  "(link-local multicast, counted apart: $multicast); install took ${install_s} s"
if [ "$packets" != 0 ]; then
  nsx nft list set inet offline_proof seen4
  nsx nft list set inet offline_proof seen6
fi
[ "$code" = 200 ] && [ "$packets" = 0 ]
