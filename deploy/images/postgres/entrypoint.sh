#!/bin/bash
# First start: a cluster in $PGDATA owned by POSTGRES_USER (password POSTGRES_PASSWORD, scram-sha-256 from any
# address of the container's networks) with the database POSTGRES_DB. Later starts: just the server.
set -euo pipefail

if [ "$(id -u)" = 0 ]; then
    # A fresh named volume may come up owned by root.
    chown postgres:postgres "$PGDATA" && chmod 0700 "$PGDATA"
    exec runuser -u postgres -- "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    if [ "$db" != postgres ]; then
        # Single-user mode: no server listening while the database is created.
        echo "CREATE DATABASE \"$db\" OWNER \"$user\";" | postgres --single -j -D "$PGDATA" postgres >/dev/null
    fi
    echo "postgres: cluster initialised in $PGDATA (user $user, database $db)"
fi

exec "$@"
