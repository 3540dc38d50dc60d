"""The internal route agents fetch a job's dataset version from: the job's token opens exactly that file while the job
is active, a broken transfer resumes with Range, and nothing else (a session, an API token) opens it."""

from __future__ import annotations

import io
import json
import logging

import pytest
from cryptography.fernet import Fernet
from django.core import signing
from django.test import Client

from audit.models import AuditEvent
from console.accounts.services.tokens import token_create
from deployments.datasets import services
from deployments.datasets.fetch import fetch_token
from deployments.datasets.models import DatasetVersion
from deployments.models import Job
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db

# ~700 KB: several of the route's 256 KiB reads.
CONTENT = b"".join(json.dumps({"text": f"row {n} " + "x" * 60}).encode() + b"\n" for n in range(9000))


def make_version(admin, dataset, content: bytes = CONTENT) -> DatasetVersion:
    upload = services.upload_start(actor=admin, dataset=dataset, filename="rows.jsonl", size=len(content))
    stream = io.BytesIO(content)
    upload = services.upload_chunk(actor=admin, upload=upload, offset=0, stream=stream, length=len(content))
    return services.upload_complete(actor=admin, upload=upload)


def finetune(version: DatasetVersion, status: str = Job.Status.RUNNING) -> Job:
    return JobFactory(
        kind=Job.Kind.FINETUNE, status=status, queue="host.gpu-7", params={"dataset_version_id": version.pk}
    )


def url(version_id: int) -> str:
    return f"/internal/datasets/versions/{version_id}/file"


def fetch(client: Client, version_id: int, token: str | None, method: str = "get", **headers):
    if token is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return getattr(client, method)(url(version_id), **headers)


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def version(admin, dataset):
    return make_version(admin, dataset)


def test_the_jobs_token_fetches_the_exact_bytes_and_the_fetch_is_audited(client, version, caplog):
    job = finetune(version)
    token = fetch_token(job, version)
    caplog.set_level(logging.DEBUG)

    response = fetch(client, version.pk, token)

    assert response.status_code == 200
    assert response.streaming  # never whole in memory
    assert body(response) == CONTENT
    assert response["Content-Length"] == str(len(CONTENT))
    assert response["ETag"] == f'"{version.sha256}"' and response["X-Content-SHA256"] == version.sha256
    assert response["Accept-Ranges"] == "bytes"
    assert token not in str(response.headers)
    event = AuditEvent.objects.get(action="dataset.fetched")
    assert (event.target_type, event.target_id) == ("deployments.datasetversion", str(version.pk))
    assert json.loads(event.detail) == {"job": job.pk, "offset": 0}
    assert event.actor_name == "agent:gpu-7"
    assert not any(token in f"{e.detail} {e.diff} {e.target_name}" for e in AuditEvent.objects.all())
    assert token not in caplog.text


def test_a_broken_transfer_resumes_with_range(client, version):
    job = finetune(version)
    token = fetch_token(job, version)
    cut = 300_001

    response = fetch(client, version.pk, token, HTTP_RANGE=f"bytes={cut}-")

    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {cut}-{len(CONTENT) - 1}/{len(CONTENT)}"
    assert response["Content-Length"] == str(len(CONTENT) - cut)
    assert CONTENT[:cut] + body(response) == CONTENT
    offsets = [json.loads(e.detail)["offset"] for e in AuditEvent.objects.filter(action="dataset.fetched")]
    assert offsets == [cut]

    past_end = fetch(client, version.pk, token, HTTP_RANGE=f"bytes={len(CONTENT)}-")
    assert past_end.status_code == 416
    assert past_end["Content-Range"] == f"bytes */{len(CONTENT)}"
    assert "file has" in past_end.json()["detail"]
    several = fetch(client, version.pk, token, HTTP_RANGE="bytes=0-10,20-30")
    assert several.status_code == 416 and "bytes=N-" in several.json()["detail"]


def test_head_answers_the_size_and_digest_without_the_body(client, version):
    token = fetch_token(finetune(version), version)
    response = fetch(client, version.pk, token, method="head")
    assert response.status_code == 200
    assert response["Content-Length"] == str(len(CONTENT)) and response["X-Content-SHA256"] == version.sha256
    assert body(response) == b""


def test_no_or_a_bad_token_is_401(client, version):
    job = finetune(version)
    good = fetch_token(job, version)
    other_salt = signing.dumps({"job": job.pk, "version": version.pk})  # signed by the console, not as a fetch token
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    for token in (None, "", "not-a-token", other_salt, tampered):
        response = fetch(client, version.pk, token)
        assert response.status_code == 401, token
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["detail"]
        if token:
            assert token not in response.content.decode()
    assert not AuditEvent.objects.filter(action="dataset.fetched").exists()


def test_an_agent_without_the_consoles_secret_key_mints_a_token_the_console_accepts(client, settings, version):
    """Agents hold SECRETS_ENCRYPTION_KEYS, never SECRET_KEY: the token depends on the former only, and a token made
    before a key rotation still opens the file while the old key is listed."""
    job = finetune(version)
    settings.SECRET_KEY = "an agent's own key, not the console's"
    token = fetch_token(job, version)
    settings.SECRET_KEY = "the console's key"
    assert fetch(client, version.pk, token).status_code == 200

    old_key = settings.SECRETS_ENCRYPTION_KEYS[0]
    settings.SECRETS_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old_key]
    assert fetch(client, version.pk, token).status_code == 200  # rotation under way
    settings.SECRETS_ENCRYPTION_KEYS = settings.SECRETS_ENCRYPTION_KEYS[:1]
    assert fetch(client, version.pk, token).status_code == 401  # the old key is gone


def test_a_finished_job_or_a_job_for_another_version_gets_403(client, admin, dataset, version):
    other = make_version(admin, dataset, CONTENT[: CONTENT.index(b"\n", 1000) + 1])  # whole rows
    finished = finetune(version, status=Job.Status.SUCCEEDED)
    cancelled = finetune(version, status=Job.Status.CANCELLED)
    for job in (finished, cancelled):
        response = fetch(client, version.pk, fetch_token(job, version))
        assert response.status_code == 403
        assert "not pending or running" in response.json()["detail"]

    trains_on_other = finetune(other)
    own_token = fetch_token(trains_on_other, other)
    assert fetch(client, other.pk, own_token).status_code == 200
    response = fetch(client, version.pk, own_token)  # its token on another version's route
    assert response.status_code == 403 and "another dataset version" in response.json()["detail"]
    response = fetch(client, version.pk, fetch_token(trains_on_other, version))  # a token for a version it skips
    assert response.status_code == 403 and "does not train on" in response.json()["detail"]
    assert fetch(client, version.pk, fetch_token(finetune(version, Job.Status.PENDING), version)).status_code == 200


def test_a_version_gone_from_the_database_or_the_store_is_404(client, version, dataset_store):
    job = finetune(version)
    token = fetch_token(job, version)
    (dataset_store / version.path).unlink()
    response = fetch(client, version.pk, token)
    assert response.status_code == 404 and "missing from the store" in response.json()["detail"]

    DatasetVersion.objects.filter(pk=version.pk).delete()
    response = fetch(client, version.pk, token)
    assert response.status_code == 404 and "does not exist" in response.json()["detail"]


def test_an_engineers_session_or_api_token_alone_cannot_fetch(engineer, admin, version):
    finetune(version)  # an active job trains on it: only its token would open the file
    session = Client()
    session.force_login(engineer)
    assert fetch(session, version.pk, None).status_code == 401
    admin_session = Client()
    admin_session.force_login(admin)
    assert fetch(admin_session, version.pk, None).status_code == 401

    _token, raw = token_create(actor=engineer, user=engineer, name="laptop")
    response = fetch(Client(), version.pk, raw)
    assert response.status_code == 401 and raw not in response.content.decode()
    assert not AuditEvent.objects.filter(action="dataset.fetched").exists()


def test_only_get_and_head_without_a_csrf_token(version):
    token = fetch_token(finetune(version), version)
    client = Client(enforce_csrf_checks=True)
    response = client.post(url(version.pk), HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"  # not a CSRF page: the view answered
    assert fetch(client, version.pk, token).status_code == 200
