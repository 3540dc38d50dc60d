"""Every role x every page and API endpoint, with the answers users must get.

anonymous: login redirect on pages, 401 on the API; a role without the action: 403; an object the
user may not see: 404. `test_every_route_is_in_the_matrix` fails when a new route is not listed here.
"""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

import audit
from deployments.models import (
    AllowedEndpoint,
    AllowedImage,
    Deployment,
    DeploymentSpec,
    Gpu,
    Host,
    Job,
    JobLogLine,
    ModelArtifact,
    ModelRepo,
    ModelSource,
)
from deployments.monitoring.models import HealthCheckRun
from tests.support.model_dirs import write_llama_dir

ROLES = ("anonymous", "nobody", "auditor", "engineer", "admin")
LOGIN = "login-redirect"


def row(method, url, anonymous, nobody, auditor, engineer, admin, data=None, route=None, needs=()):
    return {
        "method": method,
        "url": url,
        "route": route or url,
        "data": data,
        "needs": needs,
        "expected": dict(zip(ROLES, (anonymous, nobody, auditor, engineer, admin), strict=True)),
    }


GRANT = {"user": "noah-norole", "action": "view", "target_type": "console.credential", "target_id": "{credential}"}
NEW_CREDENTIAL = {"name": "new-token", "kind": "hf_token", "value": "hf_new_value_123"}

NEW_BENCH_SCHEDULE = {
    "deployment": "{running}",
    "workload": {"prompt_tokens": 16, "output_tokens": 8, "levels": [1], "duration_s": 5},
    "interval_hours": 24,
    "drop_percent": 10,
}
NEW_BENCH_SCHEDULE_FORM = {"source": "preset", "interval_hours": 24, "drop_percent": 10}
NEW_HOST = {"name": "matrix-new", "runtime": "docker", "status": "manual"}
NEW_GPU_FORM = {"index": 5, "name": "NVIDIA L40S", "memory_gb": "48", "health": "ok"}
NEW_GPU_API = {"host": "matrix-node", "index": 7, "name": "NVIDIA L40S", "memory_total": 48 * 10**9, "health": "ok"}
# A repo id the service refuses before any network call (so allowed roles get 400, the others 403).
BAD_MODEL_FORM = {"source": "{source}", "repo_id": "not a repo", "revision": "main", "host": "{store}"}
BAD_MODEL_API = {"source": "matrix-mirror", "repo_id": "not a repo", "host": "matrix-store"}
MIRROR = "http://10.77.0.5:8080"  # an address on the allow-list below: no DNS lookup, no connection
# Deployments: a tiny model on a process host with one GPU (fits); "running" holds v1 and v2, "stopped" v1.
DEPLOY_FORM = {
    "artifact": "{serve_artifact}",
    "name": "matrix-new",
    "restart_policy": "on-failure",
    "device": "gpu",
    "max_input_tokens": 128,
    "max_total_tokens": 256,
    "max_concurrent_requests": 128,
    "cuda_memory_fraction": 1.0,
    "confirm": "1",
}
EDIT_FORM = {
    "artifact": "{serve_artifact}",
    "device": "gpu",
    "max_input_tokens": 128,
    "max_total_tokens": 400,
    "max_concurrent_requests": 128,
    "cuda_memory_fraction": 1.0,
    "note": "matrix",
}
NEW_DEPLOYMENT_API = {
    "name": "matrix-api",
    "launch": False,
    "spec_input": {"artifact": "{serve_artifact}", "max_input_tokens": 128, "max_total_tokens": 256},
}
PLAN_API = {"spec": {"artifact": "{serve_artifact}", "max_input_tokens": 128, "max_total_tokens": 256}}
IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.5"
DATASET_VERSION = "/api/v1/datasets/<pk>/versions/<version>/"
DATASET_UPLOAD = "/api/v1/datasets/uploads/<pk>/"
NEW_UPLOAD = {"dataset": "{dataset}", "filename": "matrix.jsonl", "size": 10}
HUB_IMPORT_FORM = {"source": "{source}", "repo_id": "org/matrix-data", "path": "notes.txt"}
HUB_IMPORT_API = {"source": "matrix-mirror", "repo_id": "org/matrix-data", "path": "notes.txt"}

MATRIX = [
    # pages
    row("get", "/", LOGIN, 403, 200, 200, 200),
    row("get", "/login/", 200, 302, 302, 302, 302),
    row("post", "/logout/", 302, 302, 302, 302, 302),
    row("get", "/healthz", 200, 200, 200, 200, 200),
    # Prometheus' endpoints ask for no login (METRICS_BEARER_TOKEN when set: tests/deployments/monitoring).
    row("get", "/metrics", 200, 200, 200, 200, 200),
    row("get", "/metrics/targets?kind=console", 200, 200, 200, 200, 200, route="/metrics/targets"),
    row("get", "/metrics/deployments/999999", 404, 404, 404, 404, 404, route="/metrics/deployments/<int:pk>"),
    row(
        "get",
        "/metrics/deployments/9999/replicas/1",
        404,
        404,
        404,
        404,
        404,
        route="/metrics/deployments/<int:pk>/replicas/<int:index>",
    ),
    row("get", "/users/", LOGIN, 403, 403, 403, 200),
    row(
        "post",
        "/users/",
        LOGIN,
        403,
        403,
        403,
        302,
        data={"username": "newperson", "password": "a-long-enough-passphrase", "roles": ["engineer"]},
    ),
    row("get", "/users/{admin}/", LOGIN, 403, 403, 403, 200, route="/users/<int:pk>/"),
    row(
        "post",
        "/users/{engineer}/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/users/<int:pk>/",
        data={"roles": ["engineer", "auditor"], "is_active": "on"},
    ),
    row(
        "post",
        "/users/{engineer}/password/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/users/<int:pk>/password/",
        data={"password": "a-temporary-passphrase"},
    ),
    row("get", "/account/password/", LOGIN, 200, 200, 200, 200),
    row("post", "/account/password/", LOGIN, 400, 400, 400, 400, data={"current_password": "wrong"}),
    row("get", "/grants/", LOGIN, 403, 403, 403, 200),
    row("post", "/grants/", LOGIN, 403, 403, 403, 302, data=GRANT),
    row("get", "/teams/", LOGIN, 403, 403, 403, 200),
    row("post", "/teams/", LOGIN, 403, 403, 403, 302, data={"name": "matrix new team"}),
    row("get", "/teams/{team}/", LOGIN, 403, 403, 403, 200, route="/teams/<int:pk>/"),
    row(
        "post",
        "/teams/{team}/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/teams/<int:pk>/",
        data={"op": "add", "username": "audrey-auditor"},
    ),
    row("get", "/tokens/", LOGIN, 403, 200, 200, 200),
    row("post", "/tokens/", LOGIN, 403, 302, 302, 302, data={"name": "laptop"}),
    row("get", "/credentials/", LOGIN, 200, 200, 200, 200),
    row("post", "/credentials/", LOGIN, 403, 403, 302, 302, data=NEW_CREDENTIAL),
    row("get", "/credentials/{credential}/", LOGIN, 404, 403, 200, 200, route="/credentials/<int:pk>/"),
    row(
        "post",
        "/credentials/{credential}/",
        LOGIN,
        404,
        403,
        302,
        302,
        route="/credentials/<int:pk>/",
        data={"delete": "1"},
    ),
    row("post", "/credentials/rotate-key/", LOGIN, 403, 403, 403, 302),
    row("get", "/audit/", LOGIN, 403, 200, 403, 200),
    row("get", "/audit/export/?format=csv", LOGIN, 403, 200, 403, 200, route="/audit/export/"),
    row("post", "/i18n/setlang/", 302, 302, 302, 302, 302, data={"language": "zh-hans", "next": "/"}, route="/i18n/"),
    row("get", "/inventory/", LOGIN, 403, 200, 200, 200),
    row("get", "/inventory/hosts/new/", LOGIN, 403, 403, 403, 200),
    row("post", "/inventory/hosts/new/", LOGIN, 403, 403, 403, 302, data=NEW_HOST),
    row("get", "/inventory/hosts/{host}/", LOGIN, 403, 200, 200, 200, route="/inventory/hosts/<int:pk>/"),
    row("get", "/inventory/hosts/{host}/edit/", LOGIN, 403, 403, 403, 200, route="/inventory/hosts/<int:pk>/edit/"),
    row(
        "post",
        "/inventory/hosts/{host}/edit/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/inventory/hosts/<int:pk>/edit/",
        data={"name": "matrix-node", "address": "10.0.0.1", "runtime": "docker", "status": "maintenance"},
    ),
    row(
        "get",
        "/inventory/hosts/{host}/gpus/new/",
        LOGIN,
        403,
        403,
        403,
        200,
        route="/inventory/hosts/<int:pk>/gpus/new/",
    ),
    row(
        "post",
        "/inventory/hosts/{host}/gpus/new/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/inventory/hosts/<int:pk>/gpus/new/",
        data=NEW_GPU_FORM,
    ),
    row("get", "/inventory/gpus/{gpu}/edit/", LOGIN, 403, 403, 403, 200, route="/inventory/gpus/<int:pk>/edit/"),
    row(
        "post",
        "/inventory/gpus/{gpu}/edit/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/inventory/gpus/<int:pk>/edit/",
        data={"delete": "1"},
    ),
    row("get", "/inventory/sizing/", LOGIN, 403, 200, 200, 200),
    row("get", "/models/", LOGIN, 403, 200, 200, 200),
    row("get", "/models/add/", LOGIN, 403, 403, 200, 200),
    row("post", "/models/add/", LOGIN, 403, 403, 400, 400, data=BAD_MODEL_FORM),
    row("get", "/models/import/", LOGIN, 403, 403, 200, 200),
    row(
        "post",
        "/models/import/",
        LOGIN,
        403,
        403,
        302,
        302,
        data={"host": "{store}", "directory": "/srv/models/imported", "name": "org-imported"},
    ),
    row("get", "/models/{artifact}/", LOGIN, 403, 200, 200, 200, route="/models/<int:pk>/"),
    row("get", "/models/{downloading}/", LOGIN, 403, 200, 200, 200, route="/models/<int:pk>/"),
    row(
        "post",
        "/models/{downloading}/cancel/",
        LOGIN,
        403,
        403,
        302,
        302,
        route="/models/<int:pk>/cancel/",
        data={"delete_partial": "1"},
    ),
    row("post", "/models/{artifact}/delete/", LOGIN, 403, 403, 302, 302, route="/models/<int:pk>/delete/"),
    # Copying a model to another host: admins (manage_inventory); a POST without a host is a form error.
    row("get", "/models/{artifact}/copy/", LOGIN, 403, 403, 403, 200, route="/models/<int:pk>/copy/"),
    row("post", "/models/{artifact}/copy/", LOGIN, 403, 403, 403, 400, route="/models/<int:pk>/copy/"),
    row("get", "/models/gc/", LOGIN, 403, 200, 200, 200),
    row("post", "/models/gc/", LOGIN, 403, 403, 302, 302),
    row("get", "/models/sources/", LOGIN, 403, 200, 200, 200),
    row("post", "/models/sources/", LOGIN, 403, 403, 403, 302, data={"name": "new-mirror", "endpoint": MIRROR}),
    row("post", "/models/sources/endpoints/", LOGIN, 403, 403, 403, 302, data={"pattern": "10.9.0.0/16"}),
    row(
        "post",
        "/models/sources/endpoints/{endpoint}/remove/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/models/sources/endpoints/<int:pk>/remove/",
    ),
    row("get", "/jobs/", LOGIN, 403, 200, 200, 200),
    row("get", "/jobs/{job}/", LOGIN, 403, 200, 200, 200, route="/jobs/<int:pk>/"),
    row("get", "/deployments/", LOGIN, 200, 200, 200, 200),
    row("get", "/deployments/new/", LOGIN, 403, 403, 403, 200),
    row("post", "/deployments/new/", LOGIN, 403, 403, 403, 302, data=DEPLOY_FORM),
    row("get", "/deployments/images/", LOGIN, 403, 403, 403, 200),
    row("post", "/deployments/images/", LOGIN, 403, 403, 403, 302, data={"reference": "registry.local/tgi:1"}),
    row(
        "post",
        "/deployments/images/{image}/remove/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/deployments/images/<int:pk>/remove/",
    ),
    # Benchmark pages: viewers see runs; starting, cancelling and applying need use_deployment (apply: deploy too).
    row("get", "/benchmarks/", LOGIN, 403, 200, 200, 200),
    row("get", "/benchmarks/new/", LOGIN, 403, 403, 403, 200),
    row("post", "/benchmarks/new/", LOGIN, 403, 403, 403, 400, data={"deployment": "{running}"}),
    row("get", "/benchmarks/{bench}/", LOGIN, 403, 200, 200, 200, route="/benchmarks/<int:pk>/"),
    row("post", "/benchmarks/{bench}/cancel/", LOGIN, 403, 403, 403, 302, route="/benchmarks/<int:pk>/cancel/"),
    row(
        "post",
        "/benchmarks/{bench}/apply/",
        LOGIN,
        403,
        403,
        403,
        302,
        data={"rule": "x"},
        route="/benchmarks/<int:pk>/apply/",
    ),
    row(
        "get", "/benchmarks/compare/?runs={bench},{benchdone}", LOGIN, 403, 200, 200, 200, route="/benchmarks/compare/"
    ),
    row(
        "post",
        "/benchmarks/schedules/deployment/{running}/add/",
        LOGIN,
        403,
        403,
        403,
        302,
        data=NEW_BENCH_SCHEDULE_FORM,
        route="/benchmarks/schedules/deployment/<int:pk>/add/",
    ),
    row(
        "post",
        "/benchmarks/schedules/{bsched}/toggle/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/benchmarks/schedules/<int:pk>/toggle/",
    ),
    row(
        "post",
        "/benchmarks/schedules/{bsched}/delete/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/benchmarks/schedules/<int:pk>/delete/",
    ),
    row(
        "post",
        "/benchmarks/schedules/alerts/{balert}/acknowledge/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/benchmarks/schedules/alerts/<int:pk>/acknowledge/",
    ),
    row("get", "/deployments/{running}/", LOGIN, 404, 200, 200, 200, route="/deployments/<int:pk>/"),
    row("get", "/deployments/{running}/edit/", LOGIN, 404, 403, 403, 200, route="/deployments/<int:pk>/edit/"),
    row(
        "post",
        "/deployments/{running}/edit/",
        LOGIN,
        404,
        403,
        403,
        302,
        route="/deployments/<int:pk>/edit/",
        data=EDIT_FORM,
    ),
    row("post", "/deployments/{stopped}/launch/", LOGIN, 404, 403, 403, 302, route="/deployments/<int:pk>/launch/"),
    row("post", "/deployments/{running}/stop/", LOGIN, 404, 403, 403, 302, route="/deployments/<int:pk>/stop/"),
    row("post", "/deployments/{running}/restart/", LOGIN, 404, 403, 403, 302, route="/deployments/<int:pk>/restart/"),
    row(
        "post",
        "/deployments/{running}/rollback/",
        LOGIN,
        404,
        403,
        403,
        302,
        route="/deployments/<int:pk>/rollback/",
        data={"version": 1},
    ),
    row("post", "/deployments/{stopped}/delete/", LOGIN, 404, 403, 403, 302, route="/deployments/<int:pk>/delete/"),
    row(
        "get",
        "/deployments/{running}/playground/",
        LOGIN,
        404,
        403,
        403,
        200,
        route="/deployments/<int:pk>/playground/",
    ),
    # API
    row("get", "/api/v1/hosts/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/hosts/", 401, 403, 403, 403, 201, data={"name": "api-matrix"}),
    row("get", "/api/v1/hosts/{host}/", 401, 403, 200, 200, 200, route="/api/v1/hosts/<pk>/"),
    row(
        "patch",
        "/api/v1/hosts/{host}/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/hosts/<pk>/",
        data={"address": "10.0.0.2"},
    ),
    row(
        "put",
        "/api/v1/hosts/{host}/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/hosts/<pk>/",
        data={"name": "matrix-node", "labels": {"zone": "a"}},
    ),
    row("delete", "/api/v1/hosts/{host}/", 401, 403, 403, 403, 204, route="/api/v1/hosts/<pk>/"),
    row("get", "/api/v1/gpus/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/gpus/", 401, 403, 403, 403, 201, data=NEW_GPU_API),
    row("get", "/api/v1/gpus/{gpu}/", 401, 403, 200, 200, 200, route="/api/v1/gpus/<pk>/"),
    row("patch", "/api/v1/gpus/{gpu}/", 401, 403, 403, 403, 200, route="/api/v1/gpus/<pk>/", data={"health": "ok"}),
    row(
        "put",
        "/api/v1/gpus/{gpu}/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/gpus/<pk>/",
        data={"host": "matrix-node", "index": 0, "name": "NVIDIA H200", "memory_total": 150754820096},
    ),
    row("delete", "/api/v1/gpus/{gpu}/", 401, 403, 403, 403, 204, route="/api/v1/gpus/<pk>/"),
    row("get", "/api/v1/sizing/?source=/etc", 401, 403, 400, 400, 400, route="/api/v1/sizing/"),
    row("get", "/api/v1/models/?status=ready", 401, 403, 200, 200, 200, route="/api/v1/models/"),
    row("post", "/api/v1/models/", 401, 403, 403, 400, 400, data=BAD_MODEL_API),
    row("get", "/api/v1/models/{artifact}/", 401, 403, 200, 200, 200, route="/api/v1/models/<pk>/"),
    row("delete", "/api/v1/models/{artifact}/", 401, 403, 403, 202, 202, route="/api/v1/models/<pk>/"),
    row("post", "/api/v1/models/{artifact}/copy/", 401, 403, 403, 403, 400, route="/api/v1/models/<pk>/copy/"),
    row(
        "post",
        "/api/v1/models/{downloading}/cancel/",
        401,
        403,
        403,
        202,
        202,
        route="/api/v1/models/<pk>/cancel/",
        data={"delete_partial": True},
    ),
    row(
        "post",
        "/api/v1/models/import/",
        401,
        403,
        403,
        202,
        202,
        data={"host": "matrix-store", "directory": "/srv/models/api-imported"},
    ),
    row("get", "/api/v1/models/gc/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/models/gc/", 401, 403, 403, 202, 202),
    row("get", "/api/v1/sources/", 401, 403, 200, 200, 200),
    row(
        "post",
        "/api/v1/sources/",
        401,
        403,
        403,
        403,
        201,
        data={"name": "api-mirror", "kind": "mirror", "endpoint": MIRROR, "token": "hf_mirror_token"},
    ),
    row("get", "/api/v1/endpoints/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/endpoints/", 401, 403, 403, 403, 201, data={"pattern": "10.8.0.0/16", "note": "lab"}),
    row("delete", "/api/v1/endpoints/{endpoint}/", 401, 403, 403, 403, 204, route="/api/v1/endpoints/<pk>/"),
    row("get", "/api/v1/jobs/", 401, 403, 200, 200, 200),
    row("get", "/api/v1/jobs/{job}/", 401, 403, 200, 200, 200, route="/api/v1/jobs/<pk>/"),
    row("get", "/api/v1/jobs/{job}/log/?after=0", 401, 403, 200, 200, 200, route="/api/v1/jobs/<pk>/log/"),
    # Deployments are grantable: a user without a role lists none (200, empty) and gets 404 on each one.
    row("get", "/api/v1/deployments/", 401, 200, 200, 200, 200),
    row("post", "/api/v1/deployments/", 401, 403, 403, 403, 201, data=NEW_DEPLOYMENT_API),
    row("get", "/api/v1/deployments/{running}/", 401, 404, 200, 200, 200, route="/api/v1/deployments/<pk>/"),
    row(
        "patch",
        "/api/v1/deployments/{running}/",
        401,
        404,
        403,
        403,
        200,
        route="/api/v1/deployments/<pk>/",
        data={"spec": {"max_total_tokens": 400}, "note": "longer"},
    ),
    row(
        "put",
        "/api/v1/deployments/{running}/",
        401,
        404,
        403,
        403,
        200,
        route="/api/v1/deployments/<pk>/",
        data={"spec": {"max_total_tokens": 512}},
    ),
    row("delete", "/api/v1/deployments/{stopped}/", 401, 404, 403, 403, 204, route="/api/v1/deployments/<pk>/"),
    row(
        "post",
        "/api/v1/deployments/{stopped}/launch/",
        401,
        404,
        403,
        403,
        200,
        route="/api/v1/deployments/<pk>/launch/",
    ),
    row("post", "/api/v1/deployments/{running}/stop/", 401, 404, 403, 403, 200, route="/api/v1/deployments/<pk>/stop/"),
    row(
        "post",
        "/api/v1/deployments/{running}/restart/",
        401,
        404,
        403,
        403,
        200,
        route="/api/v1/deployments/<pk>/restart/",
    ),
    row(
        "post",
        "/api/v1/deployments/{running}/rollback/",
        401,
        404,
        403,
        403,
        200,
        route="/api/v1/deployments/<pk>/rollback/",
        data={"version": 1},
    ),
    row(
        "get", "/api/v1/deployments/{running}/specs/", 401, 404, 200, 200, 200, route="/api/v1/deployments/<pk>/specs/"
    ),
    row("post", "/api/v1/deployments/plan/", 401, 403, 403, 403, 200, data=PLAN_API),
    row("get", "/api/v1/images/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/images/", 401, 403, 403, 403, 201, data={"reference": "registry.local/tgi:2"}),
    row("get", "/api/v1/images/{image}/", 401, 403, 200, 200, 200, route="/api/v1/images/<pk>/"),
    row(
        "patch",
        "/api/v1/images/{image}/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/images/<pk>/",
        data={"note": "pinned later"},
    ),
    row(
        "put",
        "/api/v1/images/{image}/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/images/<pk>/",
        data={"reference": IMAGE, "digest": "sha256:" + "c" * 64},
    ),
    row("delete", "/api/v1/images/{image}/", 401, 403, 403, 403, 204, route="/api/v1/images/<pk>/"),
    row("get", "/api/v1/ping", 401, 403, 200, 200, 200, needs=("celery_worker_process",)),
    row("get", "/api/v1/me", 401, 200, 200, 200, 200),
    row("post", "/api/v1/me/password/", 401, 400, 400, 400, 400, data={"current_password": "x"}),
    row(
        "post",
        "/api/v1/users/{engineer}/password/",
        401,
        403,
        403,
        403,
        204,
        route="/api/v1/users/<pk>/password/",
        data={"password": "a-temporary-passphrase"},
    ),
    row("get", "/api/v1/schema/", 401, 200, 200, 200, 200),
    row("get", "/api/v1/docs/", 401, 200, 200, 200, 200),
    row("get", "/api/v1/", 401, 200, 200, 200, 200),
    row("get", "/api/v1/users/", 401, 403, 403, 403, 200),
    row(
        "post",
        "/api/v1/users/",
        401,
        403,
        403,
        403,
        201,
        data={"username": "apiperson", "password": "a-long-enough-passphrase", "roles": ["auditor"]},
    ),
    row("get", "/api/v1/users/{engineer}/", 401, 403, 403, 403, 200, route="/api/v1/users/<pk>/"),
    row(
        "patch",
        "/api/v1/users/{engineer}/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/users/<pk>/",
        data={"roles": ["engineer", "auditor"]},
    ),
    row(
        "put",
        "/api/v1/users/{engineer}/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/users/<pk>/",
        data={"username": "erin-engineer", "roles": ["engineer"], "is_active": True},
    ),
    row("get", "/api/v1/grants/", 401, 403, 403, 403, 200),
    row("post", "/api/v1/grants/", 401, 403, 403, 403, 201, data=GRANT),
    row("post", "/api/v1/grants/revoke/", 401, 403, 403, 403, 204, data=GRANT),
    row(
        "get",
        "/api/v1/grants/targets/?target_type=deployments.host",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/grants/targets/",
    ),
    row("get", "/api/v1/teams/", 401, 403, 403, 403, 200),
    row("post", "/api/v1/teams/", 401, 403, 403, 403, 201, data={"name": "matrix api team"}),
    row("get", "/api/v1/teams/{team}/", 401, 403, 403, 403, 200, route="/api/v1/teams/<pk>/"),
    row("patch", "/api/v1/teams/{team}/", 401, 403, 403, 403, 200, route="/api/v1/teams/<pk>/", data={"name": "t2"}),
    row("delete", "/api/v1/teams/{empty_team}/", 401, 403, 403, 403, 204, route="/api/v1/teams/<pk>/"),
    row("get", "/api/v1/teams/{team}/members/", 401, 403, 403, 403, 200, route="/api/v1/teams/<pk>/members/"),
    row(
        "post",
        "/api/v1/teams/{team}/members/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/teams/<pk>/members/",
        data={"username": "audrey-auditor"},
    ),
    row(
        "delete",
        "/api/v1/teams/{team}/members/erin-engineer/",
        401,
        403,
        403,
        403,
        204,
        route="/api/v1/teams/<pk>/members/<username>/",
    ),
    row("get", "/api/v1/tokens/", 401, 200, 200, 200, 200),
    row("post", "/api/v1/tokens/", 401, 201, 201, 201, 201, data={"name": "ci"}),
    row("get", "/api/v1/tokens/{admin_token}/", 401, 404, 404, 404, 200, route="/api/v1/tokens/<pk>/"),
    row("delete", "/api/v1/tokens/{admin_token}/", 401, 404, 404, 404, 204, route="/api/v1/tokens/<pk>/"),
    row("get", "/api/v1/credentials/", 401, 200, 200, 200, 200),
    row("post", "/api/v1/credentials/", 401, 403, 403, 201, 201, data=NEW_CREDENTIAL),
    row("get", "/api/v1/credentials/{credential}/", 401, 404, 200, 200, 200, route="/api/v1/credentials/<pk>/"),
    row(
        "patch",
        "/api/v1/credentials/{credential}/",
        401,
        404,
        403,
        200,
        200,
        route="/api/v1/credentials/<pk>/",
        data={"description": "rotated"},
    ),
    row(
        "put",
        "/api/v1/credentials/{credential}/",
        401,
        404,
        403,
        200,
        200,
        route="/api/v1/credentials/<pk>/",
        data={"name": "renamed", "kind": "hf_token", "description": ""},
    ),
    row("delete", "/api/v1/credentials/{credential}/", 401, 404, 403, 204, 204, route="/api/v1/credentials/<pk>/"),
    row("post", "/api/v1/credentials/rotate-key/", 401, 403, 403, 403, 202),
    # The audit log: view_data is global only, so the event detail is 403 (not 404) without it.
    row("get", "/api/v1/audit/events/", 401, 403, 200, 403, 200),
    row("get", "/api/v1/audit/events/{event}/", 401, 403, 200, 403, 200, route="/api/v1/audit/events/<pk>/"),
    row(
        "get",
        "/api/v1/audit/events/export/?format=jsonl",
        401,
        403,
        200,
        403,
        200,
        route="/api/v1/audit/events/export/",
    ),
    row("get", "/api/v1/audit/verification/", 401, 403, 200, 403, 200),
    row("get", "/api/v1/audit/checkpoints/", 401, 403, 200, 403, 200),
    # Datasets: matrix-team (the engineer's) owns one with a version; rows only for view_data (admins, auditors).
    row("get", "/datasets/", LOGIN, 403, 200, 200, 200),
    row("post", "/datasets/", LOGIN, 403, 403, 403, 302, data={"name": "matrix-page-ds", "team": "{team}"}),
    row("get", "/datasets/{dataset}/", LOGIN, 403, 200, 200, 200, route="/datasets/<int:pk>/"),
    row("post", "/datasets/{dataset}/delete/", LOGIN, 403, 403, 403, 302, route="/datasets/<int:pk>/delete/"),
    row(
        "get",
        "/datasets/{dataset}/versions/1/preview/",
        LOGIN,
        403,
        200,
        403,
        200,
        route="/datasets/<int:pk>/versions/<int:version>/preview/",
    ),
    row("get", "/api/v1/datasets/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/datasets/", 401, 403, 403, 403, 201, data={"name": "matrix-api-ds", "team": "{team}"}),
    row("get", "/api/v1/datasets/{dataset}/", 401, 403, 200, 200, 200, route="/api/v1/datasets/<pk>/"),
    row("delete", "/api/v1/datasets/{dataset}/", 401, 403, 403, 403, 204, route="/api/v1/datasets/<pk>/"),
    row(
        "get", "/api/v1/datasets/{dataset}/versions/", 401, 403, 200, 200, 200, route="/api/v1/datasets/<pk>/versions/"
    ),
    *[
        row(method, "/api/v1/datasets/{dataset}/versions/1/", 401, 403, *answers, route=DATASET_VERSION)
        for method, answers in (("get", (200, 200, 200)), ("delete", (403, 403, 204)))
    ],
    row(
        "get",
        "/api/v1/datasets/{dataset}/versions/1/preview/",
        401,
        403,
        200,
        403,
        200,
        route=DATASET_VERSION + "preview/",
    ),
    # Statistics: a job on an online process host (matrix-serve), for those who may use the dataset or manage it.
    row(
        "post",
        "/datasets/{dataset}/versions/1/stats/",
        LOGIN,
        403,
        403,
        302,
        302,
        route="/datasets/<int:pk>/versions/<int:version>/stats/",
    ),
    row(
        "post",
        "/api/v1/datasets/{dataset}/versions/1/stats/",
        401,
        403,
        403,
        202,
        202,
        route=DATASET_VERSION + "stats/",
        data={"tokenizer": None},
    ),
    row("post", "/api/v1/datasets/uploads/", 401, 403, 403, 403, 201, data=NEW_UPLOAD),
    row("get", "/api/v1/datasets/uploads/{upload}/", 401, 403, 403, 403, 200, route=DATASET_UPLOAD),
    row("put", "/api/v1/datasets/uploads/{upload}/?offset=0", 401, 403, 403, 403, 200, route=DATASET_UPLOAD),
    row("delete", "/api/v1/datasets/uploads/{upload}/", 401, 403, 403, 403, 204, route=DATASET_UPLOAD),
    row(
        "post",
        "/api/v1/datasets/uploads/{upload}/complete/",
        401,
        403,
        403,
        403,
        400,  # nothing arrived yet: "send the rest from offset 0"
        route=DATASET_UPLOAD + "complete/",
    ),
    # Hub imports (manage_datasets on the dataset): a file name of no dataset format is refused before any network
    # call (400); cancelling the matrix's download job is refused as no import of this dataset (400, or a message).
    row(
        "post",
        "/datasets/{dataset}/import/",
        LOGIN,
        403,
        403,
        403,
        400,
        data=HUB_IMPORT_FORM,
        route="/datasets/<int:pk>/import/",
    ),
    row(
        "post",
        "/datasets/{dataset}/import/",
        LOGIN,
        403,
        403,
        403,
        302,
        data={"cancel": "{job}"},
        route="/datasets/<int:pk>/import/",
    ),
    row(
        "post",
        "/api/v1/datasets/{dataset}/import/",
        401,
        403,
        403,
        403,
        400,
        data=HUB_IMPORT_API,
        route="/api/v1/datasets/<pk>/import/",
    ),
    row(
        "post",
        "/api/v1/datasets/{dataset}/import/cancel/",
        401,
        403,
        403,
        403,
        400,
        data={"job": "{job}"},
        route="/api/v1/datasets/<pk>/import/cancel/",
    ),
    # Token-only: agents fetch a job's dataset version with the job's fetch token (its own tests:
    # tests/deployments/datasets/test_fetch_route.py). No session opens it, whatever the role; the token is checked
    # before the version, so any pk answers 401 without one.
    row(
        "get",
        "/internal/datasets/versions/1/file",
        401,
        401,
        401,
        401,
        401,
        route="/internal/datasets/versions/<int:pk>/file",
    ),
    # A model copy's relay: only the copy jobs' tokens open it, never a session.
    row(
        "get",
        "/internal/models/copies/1/files/config.json",
        401,
        401,
        401,
        401,
        401,
        route="/internal/models/copies/<int:pk>/files/<path:relpath>",
    ),
    row(
        "post", "/internal/models/copies/1/done", 401, 401, 401, 401, 401, route="/internal/models/copies/<int:pk>/done"
    ),
    # Fine-tunes: the finetune action starts, stops and resumes them (on datasets the user may train on); the run's
    # page is the job page. Deploying an adapter needs deploy; merging it, finetune.
    row("get", "/finetune/", LOGIN, 403, 403, 200, 200),
    row("get", "/finetune/new/", LOGIN, 403, 403, 200, 200),
    row("post", "/finetune/new/", LOGIN, 403, 403, 400, 400, data={"method": "lora"}),
    row("post", "/finetune/{ftjob}/cancel/", LOGIN, 403, 403, 302, 302, route="/finetune/<int:pk>/cancel/"),
    row("post", "/finetune/{ftdone}/resume/", LOGIN, 403, 403, 302, 302, route="/finetune/<int:pk>/resume/"),
    row(
        "post",
        "/finetune/adapters/{adapter}/merge/",
        LOGIN,
        403,
        403,
        302,
        302,
        route="/finetune/adapters/<int:pk>/merge/",
    ),
    row(
        "post",
        "/finetune/adapters/{adapter}/deploy/",
        LOGIN,
        403,
        403,
        403,
        302,
        data={"deployment": "{stopped}"},
        route="/finetune/adapters/<int:pk>/deploy/",
    ),
    row("get", "/api/v1/finetunes/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/finetunes/", 401, 403, 403, 400, 400, data={"method": "lora"}),
    row("post", "/api/v1/finetunes/estimate/", 401, 403, 403, 400, 400, data={"method": "lora"}),
    row("get", "/api/v1/finetunes/{ftjob}/", 401, 403, 200, 200, 200, route="/api/v1/finetunes/<pk>/"),
    row("post", "/api/v1/finetunes/{ftjob}/cancel/", 401, 403, 403, 202, 202, route="/api/v1/finetunes/<pk>/cancel/"),
    row("post", "/api/v1/finetunes/{ftdone}/resume/", 401, 403, 403, 202, 202, route="/api/v1/finetunes/<pk>/resume/"),
    row("post", "/api/v1/adapters/{adapter}/merge/", 401, 403, 403, 202, 202, route="/api/v1/adapters/<pk>/merge/"),
    # Quantize and evaluate jobs: the finetune action starts and stops them; viewers read them and the figures.
    row("get", "/quality/", LOGIN, 403, 403, 200, 200),
    row("get", "/quality/quantize/", LOGIN, 403, 403, 200, 200),
    row("post", "/quality/quantize/", LOGIN, 403, 403, 400, 400, data={"scheme": "NF5"}),
    row("get", "/quality/evaluate/", LOGIN, 403, 403, 200, 200),
    row("post", "/quality/evaluate/", LOGIN, 403, 403, 400, 400, data={"stride": "x"}),
    row("post", "/quality/{qjob}/cancel/", LOGIN, 403, 403, 302, 302, route="/quality/<int:pk>/cancel/"),
    row("get", "/api/v1/quantize-jobs/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/quantize-jobs/", 401, 403, 403, 400, 400, data={"scheme": "NF5"}),
    row("get", "/api/v1/quantize-jobs/{qjob}/", 401, 403, 200, 200, 200, route="/api/v1/quantize-jobs/<pk>/"),
    row(
        "post",
        "/api/v1/quantize-jobs/{qjob}/cancel/",
        401,
        403,
        403,
        202,
        202,
        route="/api/v1/quantize-jobs/<pk>/cancel/",
    ),
    row("get", "/api/v1/evaluate-jobs/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/evaluate-jobs/", 401, 403, 403, 400, 400, data={"artifacts": []}),
    row("get", "/api/v1/evaluate-jobs/{ejob}/", 401, 403, 200, 200, 200, route="/api/v1/evaluate-jobs/<pk>/"),
    row(
        "post",
        "/api/v1/evaluate-jobs/{ejob}/cancel/",
        401,
        403,
        403,
        202,
        202,
        route="/api/v1/evaluate-jobs/<pk>/cancel/",
    ),
    row("get", "/api/v1/eval-results/", 401, 403, 200, 200, 200),
    row("get", "/api/v1/eval-results/{evalresult}/", 401, 403, 200, 200, 200, route="/api/v1/eval-results/<pk>/"),
    # A model's variants (its adapter, from _finetune_ids): whoever views models.
    row("get", "/quality/variants/{artifact}/", LOGIN, 403, 200, 200, 200, route="/quality/variants/<int:pk>/"),
    row(
        "get",
        "/api/v1/models/{artifact}/variants/",
        401,
        403,
        200,
        200,
        200,
        route="/api/v1/models/<int:pk>/variants/",
    ),
    # Benchmarks: everyone who views sees the runs; starting and cancelling need use_deployment on the deployment
    # (the matrix's engineer holds no grant; the admin's start is refused: matrix-running has no host).
    row("get", "/api/v1/benchmarks/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/benchmarks/", 401, 403, 403, 403, 400, data={"deployment": "{running}", "workload": {}}),
    row("get", "/api/v1/benchmarks/{bench}/", 401, 403, 200, 200, 200, route="/api/v1/benchmarks/<pk>/"),
    row("post", "/api/v1/benchmarks/{bench}/cancel/", 401, 403, 403, 403, 202, route="/api/v1/benchmarks/<pk>/cancel/"),
    row(
        "get",
        "/api/v1/benchmarks/{bench}/export.csv/",
        401,
        403,
        200,
        200,
        200,
        route="/api/v1/benchmarks/<pk>/export.csv/",
    ),
    row(
        "get",
        "/api/v1/benchmarks/{bench}/export.json/",
        401,
        403,
        200,
        200,
        200,
        route="/api/v1/benchmarks/<pk>/export.json/",
    ),
    # The tuning loop: suggestions are read by viewers; applying one needs deploy and use_deployment (the admin's
    # apply is a 400 naming `rule`: the matrix's run has not finished). Compare reads runs the caller can see.
    row(
        "get",
        "/api/v1/benchmarks/{bench}/suggestions/",
        401,
        403,
        200,
        200,
        200,
        route="/api/v1/benchmarks/<pk>/suggestions/",
    ),
    row(
        "post",
        "/api/v1/benchmarks/{bench}/apply/",
        401,
        403,
        403,
        403,
        400,
        data={"rule": "x"},
        route="/api/v1/benchmarks/<pk>/apply/",
    ),
    row(
        "get",
        "/api/v1/benchmarks/compare/?runs={bench},{benchdone}",
        401,
        403,
        200,
        200,
        200,
        route="/api/v1/benchmarks/compare/",
    ),
    # Schedules and drop alerts: viewers read them; writing and acknowledging need use_deployment.
    row("get", "/api/v1/benchmark-schedules/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/benchmark-schedules/", 401, 403, 403, 403, 201, data=NEW_BENCH_SCHEDULE),
    row(
        "get",
        "/api/v1/benchmark-schedules/{bsched}/",
        401,
        403,
        200,
        200,
        200,
        route="/api/v1/benchmark-schedules/<pk>/",
    ),
    row(
        "patch",
        "/api/v1/benchmark-schedules/{bsched}/",
        401,
        403,
        403,
        403,
        200,
        data={"drop_percent": 20},
        route="/api/v1/benchmark-schedules/<pk>/",
    ),
    row(
        "delete",
        "/api/v1/benchmark-schedules/{bsched}/",
        401,
        403,
        403,
        403,
        204,
        route="/api/v1/benchmark-schedules/<pk>/",
    ),
    row("get", "/api/v1/benchmark-alerts/", 401, 403, 200, 200, 200),
    row("get", "/api/v1/benchmark-alerts/{balert}/", 401, 403, 200, 200, 200, route="/api/v1/benchmark-alerts/<pk>/"),
    row(
        "post",
        "/api/v1/benchmark-alerts/{balert}/acknowledge/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/benchmark-alerts/<pk>/acknowledge/",
    ),
    row(
        "get",
        "/api/v1/benchmark-trend/?deployment={running}",
        401,
        403,
        200,
        200,
        200,
        route="/api/v1/benchmark-trend/",
    ),
    row(
        "post",
        "/api/v1/adapters/{adapter}/deploy/",
        401,
        403,
        403,
        403,
        400,  # the deployment serves another base model: refused on the field
        data={"deployment": "{stopped}"},
        route="/api/v1/adapters/<pk>/deploy/",
    ),
    # usage through the gateway: every role with view; what each sees is restrict_usage's (tests/deployments/gateway)
    row("get", "/gateway/usage/", LOGIN, 403, 200, 200, 200),
    row("get", "/gateway/usage/export.csv", LOGIN, 403, 200, 200, 200),
    row("get", "/api/v1/usage/", 401, 403, 200, 200, 200),
    row("get", "/api/v1/usage.csv", 401, 403, 200, 200, 200),
    # the inference log: view_data or deploy (by role, grant or team scope); what each reads is restrict_inference_log's
    row("get", "/gateway/inference-log/", LOGIN, 403, 200, 403, 200),
    row("get", "/api/v1/inference-log/", 401, 403, 200, 403, 200),
    # inference keys: those who may use a deployment (admins; engineers only with a grant, none here); service
    # accounts and team quotas: user managers, or members of the team holding deploy there (tests/deployments/gateway)
    row("get", "/gateway/keys/", LOGIN, 403, 403, 403, 200),
    row("get", "/gateway/keys/new/", LOGIN, 403, 403, 403, 200),
    row("post", "/gateway/keys/new/", LOGIN, 403, 403, 403, 302, data={"name": "m", "all_deployments": "on"}),
    row("get", "/gateway/keys/{inference_key}/", LOGIN, 403, 403, 403, 200, route="/gateway/keys/<int:pk>/"),
    row(
        "post",
        "/gateway/keys/{inference_key}/",
        LOGIN,
        403,
        403,
        403,
        302,
        data={"name": "renamed", "all_deployments": "on", "rpm": "5"},
        route="/gateway/keys/<int:pk>/",
    ),
    row(
        "post",
        "/gateway/keys/{inference_key}/revoke/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/gateway/keys/<int:pk>/revoke/",
    ),
    row("get", "/gateway/service-accounts/", LOGIN, 403, 403, 403, 200),
    row(
        "post",
        "/gateway/service-accounts/",
        LOGIN,
        403,
        403,
        403,
        302,
        data={"name": "matrix-app", "team": "{team}"},
    ),
    row(
        "get",
        "/gateway/service-accounts/{service_account}/",
        LOGIN,
        403,
        403,
        403,
        200,
        route="/gateway/service-accounts/<int:pk>/",
    ),
    row(
        "post",
        "/gateway/service-accounts/{service_account}/disable/",
        LOGIN,
        403,
        403,
        403,
        302,
        route="/gateway/service-accounts/<int:pk>/disable/",
    ),
    row(
        "get",
        "/gateway/service-accounts/{service_account}/keys/new/",
        LOGIN,
        403,
        403,
        403,
        200,
        route="/gateway/service-accounts/<int:pk>/keys/new/",
    ),
    row(
        "post",
        "/gateway/service-accounts/{service_account}/keys/new/",
        LOGIN,
        403,
        403,
        403,
        302,
        data={"name": "bot", "all_deployments": "on"},
        route="/gateway/service-accounts/<int:pk>/keys/new/",
    ),
    row("get", "/gateway/team-quotas/", LOGIN, 403, 403, 403, 200),
    row("post", "/gateway/team-quotas/", LOGIN, 403, 403, 403, 302, data={"team": "{team}", "rpm": "10"}),
    row("get", "/api/v1/inference-keys/", 401, 403, 403, 403, 200),
    row("post", "/api/v1/inference-keys/", 401, 403, 403, 403, 201, data={"name": "m", "all_deployments": True}),
    row(
        "get",
        "/api/v1/inference-keys/{inference_key}/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/inference-keys/<pk>/",
    ),
    row(
        "patch",
        "/api/v1/inference-keys/{inference_key}/",
        401,
        403,
        403,
        403,
        200,
        data={"rpm": 5},
        route="/api/v1/inference-keys/<pk>/",
    ),
    row(
        "post",
        "/api/v1/inference-keys/{inference_key}/revoke/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/inference-keys/<pk>/revoke/",
    ),
    row("get", "/api/v1/service-accounts/", 401, 403, 403, 403, 200),
    row(
        "post",
        "/api/v1/service-accounts/",
        401,
        403,
        403,
        403,
        201,
        data={"name": "matrix-api-app", "team": "matrix-team"},
    ),
    row(
        "get",
        "/api/v1/service-accounts/{service_account}/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/service-accounts/<pk>/",
    ),
    row(
        "post",
        "/api/v1/service-accounts/{service_account}/disable/",
        401,
        403,
        403,
        403,
        200,
        route="/api/v1/service-accounts/<pk>/disable/",
    ),
    row("get", "/api/v1/team-quotas/", 401, 403, 403, 403, 200),
    row("get", "/api/v1/team-quotas/{team}/", 401, 403, 403, 403, 200, route="/api/v1/team-quotas/<pk>/"),
    row(
        "put",
        "/api/v1/team-quotas/{team}/",
        401,
        403,
        403,
        403,
        200,
        data={"rpm": 5},
        route="/api/v1/team-quotas/<pk>/",
    ),
    row(
        "patch",
        "/api/v1/team-quotas/{team}/",
        401,
        403,
        403,
        403,
        200,
        data={"tpd": 500},
        route="/api/v1/team-quotas/<pk>/",
    ),
    # approvals of production deployments: read with view; decided with deploy by another user than the requester
    row("get", "/approvals/", LOGIN, 403, 200, 200, 200),
    row("get", "/approvals/{approval}/", LOGIN, 403, 200, 200, 200, route="/approvals/<int:pk>/"),
    row("post", "/approvals/{approval}/approve/", LOGIN, 403, 403, 403, 302, route="/approvals/<int:pk>/approve/"),
    row(
        "post",
        "/approvals/{approval}/reject/",
        LOGIN,
        403,
        403,
        403,
        302,
        data={"comment": "not now"},
        route="/approvals/<int:pk>/reject/",
    ),
    row("get", "/api/v1/approvals/", 401, 403, 200, 200, 200),
    row("get", "/api/v1/approvals/{approval}/", 401, 403, 200, 200, 200, route="/api/v1/approvals/<pk>/"),
    row(
        "post",
        "/api/v1/approvals/{approval}/approve/",
        401,
        403,
        403,
        403,
        200,
        data={"comment": "ok"},
        route="/api/v1/approvals/<pk>/approve/",
    ),
    row(
        "post",
        "/api/v1/approvals/{approval}/reject/",
        401,
        403,
        403,
        403,
        200,
        data={"comment": "not now"},
        route="/api/v1/approvals/<pk>/reject/",
    ),
    row(
        "post",
        "/api/v1/deployments/{running}/configure/",
        401,
        404,
        403,
        403,
        200,
        data={"prompt_retention": "full"},
        route="/api/v1/deployments/<pk>/configure/",
    ),
    # the fleet page and the charts' series: view; a host's or deployment's, as its page (tests/deployments/monitoring)
    row("get", "/fleet/", LOGIN, 403, 200, 200, 200),
    row("get", "/fleet/charts/", LOGIN, 403, 200, 200, 200),
    row("get", "/fleet/hosts/{host}/charts/", LOGIN, 403, 200, 200, 200, route="/fleet/hosts/<int:pk>/charts/"),
    row(
        "get",
        "/fleet/deployments/{running}/charts/",
        LOGIN,
        404,
        200,
        200,
        200,
        route="/fleet/deployments/<int:pk>/charts/",
    ),
    row("get", "/api/v1/charts/fleet/", 401, 403, 200, 200, 200),
    row("get", "/api/v1/charts/hosts/{host}/", 401, 403, 200, 200, 200, route="/api/v1/charts/hosts/<pk>/"),
    row(
        "get",
        "/api/v1/charts/deployments/{running}/",
        401,
        404,
        200,
        200,
        200,
        route="/api/v1/charts/deployments/<pk>/",
    ),
    # the health check: everyone who views reads it; admins run and resume it; restoring a copy is add_model
    row("get", "/health/", LOGIN, 403, 200, 200, 200),
    row("post", "/health/run/", LOGIN, 403, 403, 403, 302),
    row("get", "/health/{health_run}/", LOGIN, 403, 200, 200, 200, route="/health/<int:pk>/"),
    row("post", "/health/{health_run}/resume/", LOGIN, 403, 403, 403, 302, route="/health/<int:pk>/resume/"),
    row("get", "/health/{health_run}/report.md", LOGIN, 403, 200, 200, 200, route="/health/<int:pk>/report.md"),
    row("get", "/health/{health_run}/report.pdf", LOGIN, 403, 200, 200, 200, route="/health/<int:pk>/report.pdf"),
    row("post", "/health/models/999999/restore/", LOGIN, 403, 403, 404, 404, route="/health/models/<int:pk>/restore/"),
    row("get", "/api/v1/health-checks/", 401, 403, 200, 200, 200),
    row("post", "/api/v1/health-checks/", 401, 403, 403, 403, 201, data={}),
    row("get", "/api/v1/health-checks/{health_run}/", 401, 403, 200, 200, 200, route="/api/v1/health-checks/<pk>/"),
]


def _fill(value, ids: dict):
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("entry", MATRIX, ids=lambda e: f"{e['method'].upper()} {e['route']}")
def test_role_matrix(entry, role, users, credential, client, request, settings, tmp_path):
    from console.accounts.services.tokens import token_create

    settings.MODEL_IMPORT_ROOTS = ["/srv/models"]  # the import rows' directories
    for fixture in entry["needs"]:
        request.getfixturevalue(fixture)
    admin_token, _raw = token_create(actor=users["admin"], user=users["admin"], name="admin's")
    event = audit.record(action="test.matrix", actor=users["admin"], target=credential)
    host = Host.objects.create(name="matrix-node")
    gpu = Gpu.objects.create(host=host, index=0, name="NVIDIA H200", memory_total=150754820096)
    team = Group.objects.create(name="matrix-team")  # the engineer's team (it owns the matrix's dataset)
    team.user_set.add(users["engineer"])
    empty_team = Group.objects.create(name="matrix-empty-team")  # owns nothing: it can be deleted
    ids = {
        "admin": users["admin"].pk,
        "engineer": users["engineer"].pk,
        "credential": credential.pk,
        "admin_token": admin_token.pk,
        "event": event.pk,
        "host": host.pk,
        "gpu": gpu.pk,
        "team": team.pk,
        "empty_team": empty_team.pk,
        "health_run": HealthCheckRun.objects.create(state="done").pk,
        **_registry_ids(),
        **_deployment_ids(tmp_path),
        **_approval_ids(),
        **_gateway_ids(users["admin"], team),
        **_dataset_ids(settings, tmp_path, team, users["admin"]),
    }
    ids.update(_finetune_ids(ids))
    ids.update(_quality_ids(ids))
    ids.update(_benchmark_ids(ids))
    url = _fill(entry["url"], ids)
    data = _fill(entry["data"], ids)
    user = users[role]
    if user is not None:
        client.force_login(user)
    is_api = url.startswith("/api/")
    if is_api:
        response = getattr(client, entry["method"])(url, data=data, content_type="application/json")
    else:
        response = getattr(client, entry["method"])(url, data=data or {})
    expected = entry["expected"][role]
    if expected == LOGIN:
        assert response.status_code == 302, response
        assert response["Location"].startswith("/login/?next="), response["Location"]
    else:
        assert response.status_code == expected, (
            f"{role} {entry['method'].upper()} {url}: expected {expected}, got {response.status_code}: "
            f"{response.content[:300]!r}"
        )


def _registry_ids() -> dict:
    """A mirror on an allowed network, a ready copy nothing uses, and a copy downloading (its job has a line),
    on their own host so deleting matrix-node stays possible."""
    store = Host.objects.create(name="matrix-store", status=Host.Status.MANUAL)
    endpoint = AllowedEndpoint.objects.create(pattern="10.77.0.0/16")
    source = ModelSource.objects.create(name="matrix-mirror", kind=ModelSource.Kind.MIRROR, endpoint=MIRROR)
    files = [{"path": "config.json", "size": 10, "sha256": None, "lfs": False}]
    repo = ModelRepo.objects.create(source=source, repo_id="org/matrix", commit="a" * 40, files=files, total_size=10)
    artifact = ModelArtifact.objects.create(
        repo=repo,
        host=store,
        status=ModelArtifact.Status.READY,
        path="/srv/models/org--matrix/" + "a" * 40,
        bytes_done=10,
        bytes_total=10,
    )
    other = ModelRepo.objects.create(source=source, repo_id="org/matrix-dl", commit="b" * 40, files=files)
    downloading = ModelArtifact.objects.create(repo=other, host=store, status=ModelArtifact.Status.DOWNLOADING)
    job = Job.objects.create(
        kind=Job.Kind.DOWNLOAD,
        status=Job.Status.RUNNING,
        target_type="deployments.modelartifact",
        target_id=str(downloading.pk),
        queue=store.queue,
        log_seq=1,
        progress={"done": 4, "total": 10, "rate_bps": 2, "eta_s": 3, "file": "config.json"},
    )
    JobLogLine.objects.create(job=job, seq=1, text="attempt 1 of 3")
    return {
        "store": store.pk,
        "endpoint": endpoint.pk,
        "source": source.pk,
        "artifact": artifact.pk,
        "downloading": downloading.pk,
        "job": job.pk,
    }


def _deployment_ids(tmp_path) -> dict:
    """A tiny model on a process host with one GPU; a running deployment (v1, v2 current) and a stopped one."""
    node = Host.objects.create(name="matrix-serve", runtime=Host.Runtime.PROCESS, status=Host.Status.ONLINE)
    Gpu.objects.create(host=node, index=0, name="Matrix GPU", memory_total=16 * 10**9, health=Gpu.Health.OK)
    source = ModelSource.objects.create(name="matrix-hub", kind=ModelSource.Kind.HUB)
    repo = ModelRepo.objects.create(source=source, repo_id="org/matrix-tiny", commit="e" * 40)
    artifact = ModelArtifact.objects.create(
        repo=repo, host=node, status=ModelArtifact.Status.READY, path=str(write_llama_dir(tmp_path / "matrix-tiny"))
    )
    ids = {"serve_artifact": artifact.pk, "image": AllowedImage.objects.create(reference=IMAGE).pk}
    for name, state, versions in (
        ("running", Deployment.State.RUNNING, (256, 300)),
        ("stopped", Deployment.State.STOPPED, (256,)),
    ):
        deployment = Deployment.objects.create(name=f"matrix-{name}", state=state)
        for version, total in enumerate(versions, start=1):
            spec = DeploymentSpec.objects.create(
                deployment=deployment, version=version, artifact=artifact, max_input_tokens=128, max_total_tokens=total
            )
        deployment.spec = spec
        deployment.save(update_fields=["spec"])
        ids[name] = deployment.pk
    return ids


def _approval_ids() -> dict:
    """A production deployment (running, v1) whose stop another engineer asked for: pending, for anyone else."""
    from deployments.models import ApprovalRequest
    from tests.factories import UserFactory

    running = Deployment.objects.get(name="matrix-running")
    prod = Deployment.objects.create(name="matrix-prod", state=Deployment.State.RUNNING, environment="production")
    prod.spec = DeploymentSpec.objects.create(
        deployment=prod, version=1, artifact=running.spec.artifact, max_input_tokens=128, max_total_tokens=256
    )
    prod.save(update_fields=["spec"])
    requester = UserFactory(username="matrix-requester", roles=["engineer"])
    request = ApprovalRequest.objects.create(
        deployment=prod,
        deployment_name=prod.name,
        action="stop",
        requested_by=requester,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    return {"approval": request.pk}


def _gateway_ids(admin, team) -> dict:
    """An admin's inference key, and a service account of matrix-team."""
    from deployments.gateway import keys

    key, _ = keys.key_create(actor=admin, name="matrix-key", all_deployments=True)
    account = keys.service_account_create(actor=admin, name="matrix-bot", team=team)
    return {"inference_key": key.pk, "service_account": account.pk}


def _dataset_ids(settings, tmp_path, team, admin) -> dict:
    """A dataset matrix-team owns, with version 1 on disk, and an upload of version 2 that has received nothing."""
    from deployments.datasets import services as datasets

    settings.DATASET_STORE = tmp_path / "datasets"
    dataset = datasets.dataset_create(actor=admin, name="matrix-ds", team=team)
    content = b'{"text": "matrix row"}\n'
    upload = datasets.upload_start(actor=admin, dataset=dataset, filename="v1.jsonl", size=len(content))
    upload = datasets.upload_chunk(
        actor=admin, upload=upload, offset=0, stream=io.BytesIO(content), length=len(content)
    )
    datasets.upload_complete(actor=admin, upload=upload)
    pending = datasets.upload_start(actor=admin, dataset=dataset, filename="v2.jsonl", size=100)
    return {"dataset": dataset.pk, "upload": pending.pk}


def _finetune_ids(ids: dict) -> dict:
    """A running fine-tune and a cancelled one on the matrix dataset, and an adapter of the matrix's ready model."""
    from django.contrib.auth import get_user_model

    from deployments.datasets import services as datasets

    # A dataset of its own: the matrix deletes the other one (a version a fine-tune names stays for its lineage).
    admin = get_user_model().objects.get(pk=ids["admin"])
    dataset = datasets.dataset_create(actor=admin, name="matrix-ft-ds", team=Group.objects.get(pk=ids["team"]))
    content = b'{"text": "matrix"}\n'
    upload = datasets.upload_start(actor=admin, dataset=dataset, filename="ft.jsonl", size=len(content))
    stream = io.BytesIO(content)
    upload = datasets.upload_chunk(actor=admin, upload=upload, offset=0, stream=stream, length=len(content))
    version = datasets.upload_complete(actor=admin, upload=upload)
    params = {
        "base_artifact_id": ids["artifact"],
        "dataset_version_id": version.pk,
        "options": {"method": "lora", "precision": "auto", "hyperparameters": {}},
        "gpu_indexes": [],
    }
    common = {"kind": Job.Kind.FINETUNE, "target_type": "deployments.dataset", "target_id": str(dataset.pk)}
    running = Job.objects.create(status=Job.Status.RUNNING, params=params, **common)
    done = Job.objects.create(status=Job.Status.CANCELLED, params=params, **common)
    base = ModelArtifact.objects.get(pk=ids["artifact"])
    repo = ModelRepo.objects.create(source=base.repo.source, repo_id="matrix-ft-1", commit="f" * 40)
    adapter = ModelArtifact.objects.create(
        repo=repo,
        host=base.host,
        status=ModelArtifact.Status.READY,
        kind=ModelArtifact.Kind.ADAPTER,
        base=base,
        path="/srv/models/finetunes--matrix/adapter-job-1",
        lineage={"base": "org/matrix@" + "a" * 40},
    )
    return {"ftjob": running.pk, "ftdone": done.pk, "adapter": adapter.pk}


def _quality_ids(ids: dict) -> dict:
    """A running quantize job and a running evaluate job of the matrix's ready model, and a figure of it."""
    from deployments.models import EvalResult

    artifact = ModelArtifact.objects.get(pk=ids["artifact"])
    common = {"status": Job.Status.RUNNING, "target_type": "deployments.modelartifact", "target_id": str(artifact.pk)}
    quantize = Job.objects.create(
        kind=Job.Kind.QUANTIZE,
        params={"source_artifact_id": artifact.pk, "dataset_version_id": None, "options": {"scheme": "FP8_DYNAMIC"}},
        **common,
    )
    params = {"artifact_ids": [artifact.pk], "dataset_version_ids": [], "options": {}}
    evaluate = Job.objects.create(kind=Job.Kind.EVALUATE, params=params, **common)
    result = EvalResult.objects.create(job=evaluate, artifact=artifact, metric="perplexity", value=12.5)
    return {"qjob": quantize.pk, "ejob": evaluate.pk, "evalresult": result.pk}


def _benchmark_ids(ids: dict) -> dict:
    """A running benchmark of matrix-running (its job active, so it can be cancelled), a finished one to compare it
    with, a schedule and a drop alert."""
    from deployments.models import BenchmarkAlert, BenchmarkRun, BenchmarkSchedule

    deployment = Deployment.objects.get(pk=ids["running"])
    job = Job.objects.create(kind=Job.Kind.BENCHMARK, status=Job.Status.RUNNING, params={})
    run = BenchmarkRun.objects.create(
        deployment=deployment, spec=deployment.spec, state=BenchmarkRun.State.RUNNING, job=job, workload={}
    )
    done = BenchmarkRun.objects.create(
        deployment=deployment, spec=deployment.spec, state=BenchmarkRun.State.SUCCEEDED, workload={}
    )
    schedule = BenchmarkSchedule.objects.create(
        deployment=deployment, workload={"levels": [1]}, next_run_at=timezone.now() + timedelta(hours=1)
    )
    alert = BenchmarkAlert.objects.create(
        deployment=deployment, schedule=schedule, run=done, figure="output_tokens_per_s", value=80.0, baseline=100.0,
        change_percent=-20.0,
    )  # fmt: skip
    return {"bench": run.pk, "benchdone": done.pk, "bsched": schedule.pk, "balert": alert.pk}


def _routes(resolver=None, prefix="") -> list[str]:
    resolver = resolver or get_resolver()
    found = []
    for pattern in resolver.url_patterns:
        text = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            if text.startswith("i18n/"):
                found.append("/i18n/")
                continue
            found.extend(_routes(pattern, text))
        elif isinstance(pattern, URLPattern):
            found.append("/" + text)
    return found


def _normalise(route: str) -> str:
    # DRF router patterns are regexes: ^users/(?P<pk>[^/.]+)/$ -> users/<pk>/
    import re

    route = route.replace("^", "").replace("$", "").replace("\\.(?P<format>[a-z0-9]+)/?", "")
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", route)
    return route


def test_every_route_is_in_the_matrix():
    covered = {entry["route"] for entry in MATRIX}
    routes = {_normalise(r) for r in _routes()}
    routes = {r for r in routes if "<format>" not in r and not r.endswith(".<format>")}
    missing = sorted(r for r in routes if r not in covered and not r.startswith("/static/"))
    assert not missing, f"routes with no row in the role matrix: {missing}"
