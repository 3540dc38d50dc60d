# The llmdeploy console image: web (daphne), Celery worker and Celery beat all run from it;
# docker-compose.yml picks the process with `command:`. The default runs the web process.
#
#   scripts/bundle_base.sh                  # llmdeploy-base:bookworm, debootstrapped from Debian's mirror
#   scripts/bundle_images.sh                # stages the tree with the pinned wheels and builds every image
#   docker run --rm -p 8000:8000 -e SECRET_KEY=... llmdeploy-console
#
# Nothing is pulled from a registry: the base is the bundle's own Debian image (BASE_IMAGE), Python 3.11 and venv come
# from Debian's packages, and the Python dependencies from wheels/console/ in the build context (the pinned wheelhouse
# scripts/bundle_wheels.py writes; `pip install --no-index`), so the image builds the same with no package index.
#
# Nothing secret is baked in: keys and passwords come from the environment at run time
# (docs/operations.md lists every variable). .dockerignore keeps .env, .data and certificates out.
ARG BASE_IMAGE=llmdeploy-base:bookworm

# Two stages: `build` installs the wheels into /opt/venv and prepares the tree; the final image copies only the venv and
# the tree, so the wheels themselves (a layer COPYed, then deleted in a later layer, would still be in the image) never
# reach it. Both start from `runtime`, so the venv's interpreter is the same Debian python3 in both.
FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini \
    && rm -rf /var/lib/apt/lists/*

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/app \
    DJANGO_SETTINGS_MODULE=console.settings \
    DATA_DIR=/var/lib/console \
    MODEL_STORE=/models

FROM runtime AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# Dependencies first (their own layer, reused while the lock is unchanged): exactly the pinned wheels, no index.
COPY wheels/console.lock.txt /tmp/console.lock.txt
COPY wheels/console /tmp/wheels
RUN python -m pip install --no-index --find-links /tmp/wheels -r /tmp/console.lock.txt

# Then the project itself. PYTHONPATH=/app makes the checkout (with templates/ and locale/ beside it) the copy that
# runs; the tree the final image takes is /src without the wheels.
COPY . /src
RUN python -m pip install --no-index --no-deps /src/wheels/project/*.whl \
    && rm -rf /src/build /src/*.egg-info /src/wheels

FROM runtime

# A fixed, unprivileged uid/gid, so volume ownership stays stable across rebuilds.
RUN groupadd --system --gid 10001 console \
    && useradd --system --uid 10001 --gid console --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin console \
    && install -d -o console -g console -m 0750 /var/lib/console /models

COPY --from=build /opt/venv /opt/venv
COPY --from=build /src /app
WORKDIR /app

USER console

# Static files are collected at build time with throwaway settings: the keys the settings would
# generate land in the scratch DATA_DIR, which is deleted in the same layer. STATIC_ROOT is
# DATA_DIR/static, so the result moves to /var/lib/console/static. (A data volume mounted over
# /var/lib/console hides it: compose's `migrate` service collects again into the volume.)
RUN DATA_DIR=/tmp/build-data SECRET_KEY=build-only-not-a-secret \
        python manage.py collectstatic --noinput --verbosity 0 \
    && mv /tmp/build-data/static /var/lib/console/static \
    && rm -rf /tmp/build-data

EXPOSE 8000

# /healthz answers {"status": "ok"} when the process and the database answer. Django checks the
# Host header, so the probe sends the first concrete name from ALLOWED_HOSTS (slim has no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; names = [h.strip().lstrip('*.') for h in os.environ.get('ALLOWED_HOSTS', '').split(',')]; host = next((h for h in names if h), 'localhost'); r = u.urlopen(u.Request('http://127.0.0.1:8000/healthz', headers={'Host': host}), timeout=4); raise SystemExit(0 if r.status == 200 else 1)"]

CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "console.asgi:application"]
