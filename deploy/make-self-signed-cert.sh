#!/usr/bin/env bash
# Make a self-signed TLS certificate for the console's proxy:
#
#   deploy/make-self-signed-cert.sh console.example.internal [days]
#
# writes deploy/certs/tls.crt and deploy/certs/tls.key (mode 600). Browsers warn about a self-signed
# certificate until it (or your own CA's) is trusted; for production prefer a certificate from your CA,
# copied to the same two file names. Refuses to overwrite existing files unless FORCE=1.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || -z "$1" ]]; then
    echo "usage: $0 HOSTNAME [DAYS]" >&2
    exit 2
fi
host="$1"
days="${2:-825}"
if ! [[ "$host" =~ ^[A-Za-z0-9.*-]+$ || "$host" =~ ^[0-9a-fA-F:]+$ ]]; then
    echo "not a host name or address: $host" >&2
    exit 2
fi

certs_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/certs"
crt="$certs_dir/tls.crt"
key="$certs_dir/tls.key"
mkdir -p "$certs_dir"
if [[ -e "$crt" || -e "$key" ]] && [[ "${FORCE:-0}" != 1 ]]; then
    echo "$crt or $key exists already; set FORCE=1 to replace them" >&2
    exit 1
fi

# An IP address goes into the certificate as an IP SAN, a name as a DNS SAN.
if [[ "$host" =~ ^[0-9.]+$ || "$host" =~ : ]]; then
    san="IP:$host"
else
    san="DNS:$host"
fi

umask 077
openssl req -x509 -newkey rsa:3072 -sha256 -nodes \
    -days "$days" \
    -subj "/CN=$host" \
    -addext "subjectAltName=$san" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
    -addext "extendedKeyUsage=serverAuth" \
    -keyout "$key" -out "$crt"
chmod 600 "$key"
chmod 644 "$crt"
echo "wrote $crt and $key for $host (valid $days days)"
openssl x509 -in "$crt" -noout -subject -enddate -fingerprint -sha256
