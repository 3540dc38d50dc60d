"""Settings for the console, all from the environment (names in docs/operations.md).

Without DATABASE_URL the console uses SQLite under DATA_DIR; without REDIS_URL it uses the private
redis-server that `manage.py runconsole` (or `python -m console.devserver.embedded_redis`) starts under DATA_DIR.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from console.devserver import embedded_redis
from console.env import (
    celery_url,
    env_bool,
    env_int,
    env_list,
    env_str,
    new_fernet_key,
    new_secret_key,
    private_file,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / ".data"))).resolve()

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY") or private_file(DATA_DIR / "secret_key", new_secret_key)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Exact origins (scheme://host[:port]) whose pages may open websockets; empty: ALLOWED_HOSTS over http and https
# plus CSRF_TRUSTED_ORIGINS, and always the origin the socket is opened on (console/origins.py).
WEBSOCKET_ALLOWED_ORIGINS = env_list("WEBSOCKET_ALLOWED_ORIGINS", [])

# Stored secrets (HF tokens...) are encrypted with the first key; older keys only decrypt until
# `manage.py rotate_secrets_key` has re-encrypted everything.
SECRETS_ENCRYPTION_KEYS = env_list("SECRETS_ENCRYPTION_KEYS", []) or [
    private_file(DATA_DIR / "secrets_key", new_fernet_key)
]
# A GPU host's agent acts for the console but never vouches for the audit log: it holds no checkpoint key.
GPU_AGENT = env_bool("GPU_AGENT", False)
AUDIT_CHECKPOINT_KEY = env_str("AUDIT_CHECKPOINT_KEY") or (
    "" if GPU_AGENT else private_file(DATA_DIR / "audit_checkpoint_key", new_secret_key)
)

MODEL_STORE = Path(env_str("MODEL_STORE", str(DATA_DIR / "models")))
# Datasets live on the console (one file per version); uploads arrive in chunks of at most 8 MiB, in total at most
# DATASET_UPLOAD_MAX_BYTES per file.
DATASET_STORE = Path(env_str("DATASET_STORE", str(DATA_DIR / "datasets")))
DATASET_UPLOAD_MAX_BYTES = env_int("DATASET_UPLOAD_MAX_BYTES", 10 * 2**30)
# Agents fetch the dataset version a job trains on over an authenticated internal route (job-scoped token) from
# CONSOLE_INTERNAL_URL and keep it in DATASET_CACHE_DIR on their host, verified by sha256.
CONSOLE_INTERNAL_URL = env_str("CONSOLE_INTERNAL_URL", "http://127.0.0.1:8000")
# The queue of work that must run beside the console (dataset imports write DATASET_STORE): its own worker only.
CONSOLE_QUEUE = env_str("CONSOLE_QUEUE", "celery")
DATASET_CACHE_DIR = Path(env_str("DATASET_CACHE_DIR", str(DATA_DIR / "dataset-cache")))
# Fine-tune checkpoints in tiers: the newest CHECKPOINT_KEEP_FAST stay in CHECKPOINT_DIR (fast disk), older ones
# move to CHECKPOINT_ARCHIVE_DIR (another disk), and beyond CHECKPOINT_RETAIN in all they are deleted.
CHECKPOINT_DIR = Path(env_str("CHECKPOINT_DIR", str(DATA_DIR / "checkpoints")))
CHECKPOINT_ARCHIVE_DIR = Path(env_str("CHECKPOINT_ARCHIVE_DIR", str(DATA_DIR / "checkpoints-archive")))
CHECKPOINT_KEEP_FAST = env_int("CHECKPOINT_KEEP_FAST", 3)
CHECKPOINT_RETAIN = env_int("CHECKPOINT_RETAIN", 10)
# A cancelled job program saves a checkpoint at its next step boundary; after this long it is killed.
JOB_PROGRAM_STOP_GRACE_SECONDS = env_int("JOB_PROGRAM_STOP_GRACE_SECONDS", 300)
# Directories on the hosts from which models may be imported in place (their manifest is written there).
MODEL_IMPORT_ROOTS = env_list("MODEL_IMPORT_ROOTS", [])  # empty: MODEL_STORE
# Copying a model between hosts goes through the console (agents reach only CONSOLE_INTERNAL_URL): the sending host's
# files wait in MODEL_COPY_RELAY until the receiving host has them; the receiver waits MODEL_COPY_WAIT_S for a file.
# MODEL_COPY_FIRST: a launch placed on a host without the files copies them from a host that holds them even for a
# Hub or mirror model (a site whose hosts cannot reach the source); imports and console-made models are always copied.
MODEL_COPY_RELAY = Path(env_str("MODEL_COPY_RELAY", str(DATA_DIR / "model-relay")))
MODEL_COPY_WAIT_S = env_int("MODEL_COPY_WAIT_S", 3600)
MODEL_COPY_FIRST = env_bool("MODEL_COPY_FIRST", False)
ML_PYTHON = env_str("ML_PYTHON", str(BASE_DIR / ".venv-ml" / "bin" / "python"))
# Test suites only: extra read-only "host:container" bind mounts the docker runtime adds to every server (the
# host's Python and ML venv inside a near-empty test image). start() refuses them unless CONSOLE_TESTING is on.
DOCKER_TEST_EXTRA_MOUNTS = env_list("DOCKER_TEST_EXTRA_MOUNTS", [])
CONSOLE_TESTING = env_bool("CONSOLE_TESTING", False)
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 120)
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3)
JOB_REAPER_SECONDS = env_int("JOB_REAPER_SECONDS", 30)
JOB_CANCEL_POLL_SECONDS = float(env_str("JOB_CANCEL_POLL_SECONDS", "1"))
# More modules registering job kinds (the test suite adds its own probes).
DOWNLOAD_CHUNK_BYTES = env_int("DOWNLOAD_CHUNK_BYTES", 8 * 2**20)
# Free space a download must leave on the model store's disk beyond its own files (checked before it starts).
DOWNLOAD_FREE_MARGIN_BYTES = env_int("DOWNLOAD_FREE_MARGIN_BYTES", 2**30)
# Seconds an interactive call (adding a model, resolving, sizing) waits for a model source to accept a
# connection; an unreachable Hub answers within this, not after minutes of retries. Downloads keep their own.
HUB_CONNECT_TIMEOUT = float(env_str("HUB_CONNECT_TIMEOUT", "5"))
# Where a ModelScope source without its own endpoint goes (a source's endpoint names a mirror instead).
MODELSCOPE_ENDPOINT = env_str("MODELSCOPE_ENDPOINT", "https://www.modelscope.cn")
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 3600)
HOST_OFFLINE_SECONDS = env_int("HOST_OFFLINE_SECONDS", 90)
# Set on a GPU host's worker: it then reports that host's GPUs and heartbeats (workers/agent.py).
AGENT_HOST_NAME = env_str("AGENT_HOST_NAME")
AGENT_HEARTBEAT_SECONDS = env_int("AGENT_HEARTBEAT_SECONDS", 30)
AGENT_NVML_MODULE = env_str("AGENT_NVML_MODULE", "pynvml")
# The runtime a host registers with (its model servers run as "docker" containers or local "process"es).
AGENT_RUNTIME = env_str("AGENT_RUNTIME", "docker")
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT")
OTEL_ENABLED = env_bool("OTEL_ENABLED", bool(OTEL_EXPORTER_OTLP_ENDPOINT))
# Where trace ids on job and audit pages link to: "{trace_id}" in it is replaced (e.g. a Jaeger UI:
# "http://jaeger:16686/trace/{trace_id}"). Empty: ids are shown without a link.
TRACING_UI_URL = env_str("TRACING_UI_URL")

# --- monitoring (docs/operations.md, "Monitoring") ----------------------------------------------
# /metrics, the service-discovery list and the deployments' proxied metrics ask for this bearer token when set.
METRICS_BEARER_TOKEN = env_str("METRICS_BEARER_TOKEN")
# prometheus-client's multiprocess mode: every process (daphne, gateway, Celery) writes its counters there and
# /metrics sums them. Emptied when `make run` / runconsole starts.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", str(DATA_DIR / "prometheus"))
# prometheus_client chooses multiprocess mode from the environment when it is imported: set it for every process.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", PROMETHEUS_MULTIPROC_DIR)
Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
# Where the console's charts read series when an operator runs Prometheus (empty: the console's own samples).
PROMETHEUS_URL = env_str("PROMETHEUS_URL")
# The address Prometheus reaches this console at (discovery lists it for the proxied deployment metrics).
METRICS_PUBLIC_ADDRESS = env_str("METRICS_PUBLIC_ADDRESS")
# The agent's GPU exporter: the port it listens on (0: none), and where its GPU readings come from: "nvml" (the
# agent reads NVML) or "dcgm" (an NVIDIA DCGM exporter already running on the host, at DCGM_EXPORTER_URL).
AGENT_METRICS_PORT = env_int("AGENT_METRICS_PORT", 9835)
AGENT_METRICS_ADDRESS = env_str("AGENT_METRICS_ADDRESS", "0.0.0.0")  # noqa: S104 - Prometheus scrapes it
AGENT_GPU_METRICS_SOURCE = env_str("AGENT_GPU_METRICS_SOURCE", "nvml")
# On a GPU host that does not share the console's PROMETHEUS_MULTIPROC_DIR (another machine): the agent's exporter
# also serves the job durations and downloaded bytes its own processes counted. Off where the console reads them.
AGENT_METRICS_PROCESS_COUNTERS = env_bool("AGENT_METRICS_PROCESS_COUNTERS", False)
DCGM_EXPORTER_URL = env_str("DCGM_EXPORTER_URL", "http://127.0.0.1:9400/metrics")
# The console's own samples (charts without Prometheus): 1-minute for TELEMETRY_MINUTE_DAYS, then 15-minute
# for TELEMETRY_QUARTER_DAYS.
TELEMETRY_MINUTE_DAYS = env_int("TELEMETRY_MINUTE_DAYS", 1)
TELEMETRY_QUARTER_DAYS = env_int("TELEMETRY_QUARTER_DAYS", 31)
TELEMETRY_DOWNSAMPLE_SECONDS = env_int("TELEMETRY_DOWNSAMPLE_SECONDS", 300)
DEPLOYMENT_SAMPLE_SECONDS = env_int("DEPLOYMENT_SAMPLE_SECONDS", 60)
# GPU health (deployments/inventory/gpu_health.py): a GPU thermally throttled for this long is degraded.
GPU_THERMAL_THROTTLE_SECONDS = env_int("GPU_THERMAL_THROTTLE_SECONDS", 300)
# The health check: a cron expression (minute hour day-of-month month day-of-week; monthly by default), the
# integrity sweep's read rate in MB/s (0: unthrottled), the certificates it reads for expiry, where backups land.
HEALTH_CHECK_CRON = env_str("HEALTH_CHECK_CRON", "0 3 1 * *")
INTEGRITY_SWEEP_MB_S = float(env_str("INTEGRITY_SWEEP_MB_S", "200"))
HEALTH_CHECK_CERTIFICATES = env_list("HEALTH_CHECK_CERTIFICATES", [])
BACKUP_DIR = env_str("BACKUP_DIR")
# Deployments: where servers listen, how long each launch state may last, restarts, the playground.
DEPLOY_BIND_ADDRESS = env_str("DEPLOY_BIND_ADDRESS", "127.0.0.1")
DEPLOY_DEADLINE_DOWNLOADING = env_int("DEPLOY_DEADLINE_DOWNLOADING", 6 * 3600)
DEPLOY_DEADLINE_STARTING = env_int("DEPLOY_DEADLINE_STARTING", 1800)
DEPLOY_STOP_GRACE_SECONDS = env_int("DEPLOY_STOP_GRACE_SECONDS", 90)
DEPLOY_HEALTH_SECONDS = float(env_str("DEPLOY_HEALTH_SECONDS", "10"))
DEPLOY_RESTART_BACKOFF_SECONDS = env_int("DEPLOY_RESTART_BACKOFF_SECONDS", 10)
DEPLOY_RESTART_BACKOFF_MAX = env_int("DEPLOY_RESTART_BACKOFF_MAX", 600)
DEPLOY_RECONCILE_SECONDS = env_int("DEPLOY_RECONCILE_SECONDS", 30)
# serve.py even where text-generation-launcher is installed (the process runtime).
PROCESS_RUNTIME_FORCE_SERVE = env_bool("PROCESS_RUNTIME_FORCE_SERVE", False)
# Store playground prompt text in the audit log (off: only who, when, which deployment, token counts).
PLAYGROUND_AUDIT_PROMPTS = env_bool("PLAYGROUND_AUDIT_PROMPTS", False)

# --- the inference gateway (deployments/gateway; its own ASGI service, console/gateway_asgi.py) ----------------
GATEWAY_PORT = env_int("GATEWAY_PORT", 8001)  # where `make run` serves it
# The address applications are told to call (keys page, docs); empty: this console's host on GATEWAY_PORT.
GATEWAY_PUBLIC_URL = env_str("GATEWAY_PUBLIC_URL", "")
# How long a gateway process trusts what it read of a key or a deployment; revocations take effect at once anyway.
GATEWAY_CACHE_SECONDS = float(env_str("GATEWAY_CACHE_SECONDS", "2"))
GATEWAY_UPSTREAM_TIMEOUT = env_int("GATEWAY_UPSTREAM_TIMEOUT", 600)
# The inference log and usage figures are written in batches: at most this often, or this many records at once.
GATEWAY_FLUSH_SECONDS = float(env_str("GATEWAY_FLUSH_SECONDS", "1"))
GATEWAY_BATCH_MAX = env_int("GATEWAY_BATCH_MAX", 500)
INFERENCE_KEY_DEFAULT_DAYS = env_int("INFERENCE_KEY_DEFAULT_DAYS", 90)
INFERENCE_KEY_MAX_DAYS = env_int("INFERENCE_KEY_MAX_DAYS", 365)
# Approval requests for production deployments lapse after this long unanswered.
APPROVAL_TTL_SECONDS = env_int("APPROVAL_TTL_SECONDS", 7 * 86400)
# A benchmark re-run after an applied suggestion waits at most this long for the deployment to run the new version
# (counted from the approval, on a production deployment); then it is cancelled with the reason.
BENCHMARK_RERUN_WAIT_SECONDS = env_int("BENCHMARK_RERUN_WAIT_SECONDS", 3600)

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "axes",
    "channels",
    "console",
    "deployments",
    "audit",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "audit.middleware.AuditContextMiddleware",
    # A person with an admin's temporary password may only change it (pages redirect, API calls get 403).
    "console.accounts.middleware.PasswordChangeRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so a locked-out login attempt is answered before the view runs.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"
WSGI_APPLICATION = "console.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.navigation",
                "console.context_processors.services",
                "deployments.serving.context_processors.approvals_waiting",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------
_SQLITE_OPTIONS = {
    # Web, worker and beat share the file: WAL lets readers run beside one writer, IMMEDIATE
    # takes the write lock at BEGIN so two writers queue instead of failing mid-transaction.
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
}
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "console.sqlite3",
            "OPTIONS": _SQLITE_OPTIONS,
            "TEST": {"NAME": DATA_DIR / "test-console.sqlite3"},
        }
    }
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"].setdefault("OPTIONS", {}).update(_SQLITE_OPTIONS)
# PostgreSQL ends a session left idle inside a transaction this long (0: never) and so releases its row locks. An
# agent cut off from the network in the middle of a heartbeat holds its host's row until TCP gives up (hours), and
# marking the host offline waits for that lock; on by default for agents, which reach the database over a network.
DB_IDLE_IN_TRANSACTION_SECONDS = env_int("DB_IDLE_IN_TRANSACTION_SECONDS", 30 if AGENT_HOST_NAME else 0)
if DB_IDLE_IN_TRANSACTION_SECONDS and DATABASES["default"]["ENGINE"].endswith("postgresql"):
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _idle = f"-c idle_in_transaction_session_timeout={DB_IDLE_IN_TRANSACTION_SECONDS * 1000}"
    _options["options"] = f"{_options.get('options', '')} {_idle}".strip()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# PostgreSQL: migrate, connected as the owner, creates this role for web, worker, beat and agents (INSERT and
# SELECT only on the audit tables) when its password is set (audit/database_roles.py).
DATABASE_APP_USER = env_str("DATABASE_APP_USER", "console_app")
DATABASE_APP_PASSWORD = env_str("DATABASE_APP_PASSWORD")

# --- redis: celery, channels and the cache share one server; sessions stay in the database ---
REDIS_URL = env_str("REDIS_URL") or embedded_redis.url_for(DATA_DIR)
# Redis away (restarting, unreachable): a call fails within these seconds instead of hanging a page, a worker
# or beat; the cache then answers a miss, a job's dispatch is left to the reaper (docs/operations.md, F5).
REDIS_SOCKET_TIMEOUT = float(env_str("REDIS_SOCKET_TIMEOUT", "3"))
REDIS_CONNECT_TIMEOUT = float(env_str("REDIS_CONNECT_TIMEOUT", "2"))
CACHES = {
    "default": {
        "BACKEND": "console.cache.TolerantRedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "console",
        "OPTIONS": {"socket_timeout": REDIS_SOCKET_TIMEOUT, "socket_connect_timeout": REDIS_CONNECT_TIMEOUT},
    }
}
SESSION_ENGINE = "django.contrib.sessions.backends.db"

CHANNEL_LAYERS = {
    "default": {
        # channels_redis's, its waits for messages shorter than redis-py's read timeout (console/channel_layer.py)
        "BACKEND": "console.channel_layer.ConsoleChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            # The default of 100 drops live log lines under a chatty job.
            "capacity": env_int("CHANNELS_CAPACITY", 10_000),
            "group_expiry": env_int("CHANNELS_GROUP_EXPIRY", 86_400),
            "prefix": env_str("CHANNELS_PREFIX", "console"),
        },
    }
}
# A live subscriber that heard nothing for this long checks the stream's committed head and sends what it lacks
# (a lost tail of live messages, the end of a finished job's stream).
STREAM_IDLE_CHECK_MS = env_int("STREAM_IDLE_CHECK_MS", 2000)
# A live socket whose client has left sent bytes unread for this long (or lets more than
# STREAM_SOCKET_BACKLOG_BYTES pile up) is closed: the client reconnects with its last seq and gets the rest from the
# database in a few large messages instead of the server holding every live batch for it. 0: no bound.
STREAM_SOCKET_STALL_SECONDS = float(env_str("STREAM_SOCKET_STALL_SECONDS", "10"))
STREAM_SOCKET_BACKLOG_BYTES = env_int("STREAM_SOCKET_BACKLOG_BYTES", 8 * 2**20)

CELERY_BROKER_URL = celery_url(REDIS_URL)
CELERY_RESULT_BACKEND = celery_url(REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 600)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 540)
CELERY_RESULT_EXPIRES = 3600
# kombu hands an unacknowledged task out again once it is older than the visibility timeout, checking every
# 10 x 10 s by default; CELERY_UNACKED_RESTORE_SECONDS makes that check every N s (the fault tests use 1 s).
CELERY_UNACKED_RESTORE_SECONDS = env_int("CELERY_UNACKED_RESTORE_SECONDS", 0)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
    **(
        {"unacked_restore_interval": CELERY_UNACKED_RESTORE_SECONDS, "unacked_restore_throttle": 1}
        if CELERY_UNACKED_RESTORE_SECONDS
        else {}
    ),
}
# One retry where Celery's result backend makes 20 (each a socket timeout): ping answers 503 within seconds.
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
}
CELERY_REDIS_SOCKET_TIMEOUT = REDIS_SOCKET_TIMEOUT
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = REDIS_CONNECT_TIMEOUT
# One retry of a publish that failed, not three: a request sending a task waits seconds, not a minute, for a Redis
# that is away (jobs are re-sent by the reaper from the database anyway).
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
AUDIT_CHECKPOINT_SECONDS = env_int("AUDIT_CHECKPOINT_SECONDS", 600)
# Beat writes each signed checkpoint here once, as a read-only file (mount a directory web and worker do not, or
# one synced off the host); `audit_verify --checkpoints DIR` checks the chain against them.
AUDIT_CHECKPOINT_EXPORT_DIR = env_str("AUDIT_CHECKPOINT_EXPORT_DIR")


def _crontab(minute, hour, day_of_month, month_of_year, day_of_week):  # cron's field order, not crontab()'s
    from celery.schedules import crontab

    return crontab(minute, hour, day_of_week, day_of_month, month_of_year)


CELERY_BEAT_SCHEDULE: dict = {
    "audit-checkpoint": {"task": "audit.checkpoint", "schedule": AUDIT_CHECKPOINT_SECONDS},
    "hosts-mark-offline": {"task": "workers.agent.mark_offline", "schedule": max(5, HOST_OFFLINE_SECONDS // 3)},
    "jobs-reap": {"task": "workers.jobs_reap", "schedule": JOB_REAPER_SECONDS},
    "deployments-reconcile": {"task": "workers.deployments_reconcile", "schedule": DEPLOY_RECONCILE_SECONDS},
    "login-failures-audit": {"task": "workers.login_failures_flush", "schedule": 60},
    "inference-log-flush": {"task": "workers.inference_log_flush", "schedule": 60},
    "approvals-expire": {"task": "workers.approvals_expire", "schedule": 60},
    "benchmark-reruns-due": {"task": "workers.benchmark_reruns_due", "schedule": 15},
    "benchmark-schedules-due": {"task": "workers.benchmark_schedules_due", "schedule": 60},
    "deployment-samples": {"task": "workers.deployment_samples", "schedule": DEPLOYMENT_SAMPLE_SECONDS},
    "telemetry-downsample": {"task": "workers.telemetry_downsample", "schedule": TELEMETRY_DOWNSAMPLE_SECONDS},
    "health-check": {"task": "workers.health_check_scheduled", "schedule": _crontab(*HEALTH_CHECK_CRON.split())},
}

# --- auth ------------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous requests never pass a check
GUARDIAN_RAISE_403 = False
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Login throttling: after AXES_FAILURE_LIMIT failures for one username from one address, that pair
# is locked out for AXES_COOLOFF_MINUTES. Every attempt is logged by axes.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_int("AXES_COOLOFF_MINUTES", 15) / 60
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
AXES_IPWARE_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
# Password spraying: after AXES_ADDRESS_FAILURE_LIMIT failures from one address, whatever the usernames, that
# address is locked the same way (console/accounts/throttle.py). Failed logins from one address are written
# to the audit log as the first one, then counted events of at most LOGIN_FAILURE_AUDIT_BATCH failures.
AXES_HANDLER = "console.accounts.throttle.ConsoleAxesHandler"
AXES_ADDRESS_FAILURE_LIMIT = env_int("AXES_ADDRESS_FAILURE_LIMIT", 20)
LOGIN_FAILURE_AUDIT_BATCH = env_int("LOGIN_FAILURE_AUDIT_BATCH", 100)

API_TOKEN_DEFAULT_DAYS = env_int("API_TOKEN_DEFAULT_DAYS", 90)
API_TOKEN_MAX_DAYS = env_int("API_TOKEN_MAX_DAYS", 365)

# --- web security ----------------------------------------------------------------------------
# SECURE_TLS=true when the console is reached through HTTPS (the reverse proxy in
# docker-compose.yml terminates TLS). The embedded default serves plain HTTP on loopback.
SECURE_TLS = env_bool("SECURE_TLS", False)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600)
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
if SECURE_TLS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # The proxy's health probe talks plain HTTP to web directly.
    # Prometheus scrapes /metrics (and discovery, the proxied deployment metrics) over plain HTTP on the backend.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics(/|$)"]

# --- i18n --------------------------------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_TZ = True

# --- static ------------------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "console" / "assets"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "console.staticfinders.XStaticFinder",
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

# --- REST API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token before session: an API client without credentials gets 401 with a WWW-Authenticate header.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "console.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["console.api.scopes.AuthenticatedWithinTokenScope"],
    "DEFAULT_PAGINATION_CLASS": "console.api.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "console.api.errors.exception_handler",
    # The parsers refuse NUL characters and unpaired surrogates in any body (console/api/parsers.py).
    "DEFAULT_PARSER_CLASSES": [
        "console.api.parsers.JSONParser",
        "console.api.parsers.FormParser",
        "console.api.parsers.MultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "llmdeploy console API",
    "DESCRIPTION": (
        "Everything the console's UI does, for automation. Authenticate with `Authorization: Bearer <token>`."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Names for choice sets whose field name ("kind") other components use for other choices.
    "ENUM_NAME_OVERRIDES": {
        "EvalTaskKindEnum": "workers.jobs.evaluate_spec.TASK_KINDS",
        "JobKindEnum": "deployments.jobs.models.Job.Kind",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}, "axes": {"level": env_str("AXES_LOG_LEVEL", "WARNING")}},
}
