# The llmdeploy console image: web (daphne), Celery worker and Celery beat all run from it;
# docker-compose.yml picks the process with `command:`. The default runs the web process.
#
#   docker build -t llmdeploy-console .
#   docker run --rm -p 8000:8000 -e SECRET_KEY=... llmdeploy-console
#
# Nothing secret is baked in: keys and passwords come from the environment at run time
# (docs/operations.md lists every variable). .dockerignore keeps .env, .data and certificates out.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/app \
    DJANGO_SETTINGS_MODULE=console.settings \
    DATA_DIR=/var/lib/console \
    MODEL_STORE=/models

# A fixed, unprivileged uid/gid, so volume ownership stays stable across rebuilds.
RUN groupadd --system --gid 10001 console \
    && useradd --system --uid 10001 --gid console --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin console \
    && install -d -o console -g console -m 0750 /var/lib/console /models

WORKDIR /app
RUN python -m pip install "pip>=25.3"

# Dependencies first (their own layer, reused while pyproject.toml is unchanged).
COPY pyproject.toml build-constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && python -m pip install --build-constraint build-constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself. PYTHONPATH=/app makes the checkout (with templates/ and locale/ beside it)
# the copy that runs.
COPY . .
RUN python -m pip install --build-constraint build-constraints.txt . \
    && rm -rf build *.egg-info

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
