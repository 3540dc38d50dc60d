#!/bin/sh
# Prometheus reads the console's bearer token from a file (prometheus.yml: credentials_file); compose passes it
# in the environment as METRICS_BEARER_TOKEN, the same variable the console reads.
set -eu
umask 077
printf '%s' "${METRICS_BEARER_TOKEN:-}" > /run/prometheus/metrics-token
exec /usr/bin/prometheus "$@"
