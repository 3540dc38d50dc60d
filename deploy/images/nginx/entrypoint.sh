#!/bin/sh
# Copies the mounted site configuration (/etc/nginx/conf.d, read-only) to /run/nginx-conf.d, which nginx.conf
# includes. Debian 12's nginx is 1.22, older than the `http2 on;` directive (1.25.1) deploy/nginx/console.conf uses:
# on it, HTTP/2 moves onto the `listen ... ssl` lines instead, which is the same configuration in 1.22's syntax.
set -eu
mkdir -p /run/nginx-conf.d
rm -f /run/nginx-conf.d/*.conf
for conf in /etc/nginx/conf.d/*.conf; do
    [ -e "$conf" ] || continue
    cp "$conf" /run/nginx-conf.d/
done
if ! nginx -V 2>&1 | grep -q 'nginx/1\.\(2[5-9]\|[3-9][0-9]\)'; then
    sed -i -e '/^[[:space:]]*http2 on;/d' -e 's/^\([[:space:]]*listen[^;]*[[:space:]]ssl\)\([[:space:];]\)/\1 http2\2/' \
        /run/nginx-conf.d/*.conf
fi
exec "$@"
