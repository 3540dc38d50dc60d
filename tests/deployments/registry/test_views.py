"""Model registry pages, API and job stream: adding (errors where the user typed, dedupe per host and
commit), cancelling, deleting, garbage collection, importing, sources and the allow-list, job logs."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from audit.models import AuditEvent
from console.accounts.services.credentials import credential_create
from console.asgi import application
from deployments.models import (
    AllowedEndpoint,
    ArtifactUse,
    Job,
    JobLogLine,
    ModelArtifact,
    ModelRepo,
    ModelSource,
)
from tests.console.test_websocket import ORIGIN, session_cookie
from tests.factories import (
    HostFactory,
    JobFactory,
    ModelArtifactFactory,
    ModelRepoFactory,
    ModelSourceFactory,
    UserFactory,
)

CONFIG = json.dumps({"model_type": "llama", "hidden_size": 64}).encode()
SHA = "ab" * 32


@pytest.fixture
def store(db):
    return HostFactory(name="gpu-store-1", manual=True)


@pytest.fixture
def mirror(db, hub_server):
    """A mirror source served by the test Hub, its address allowed."""
    AllowedEndpoint.objects.create(pattern="127.0.0.1", note="test hub")
    return ModelSourceFactory(name="test-mirror", kind=ModelSource.Kind.MIRROR, endpoint=hub_server.endpoint)


def make_artifact(host, repo_id="org/model", status=ModelArtifact.Status.READY, path="", **fields) -> ModelArtifact:
    files = [
        {"path": "config.json", "size": len(CONFIG), "sha256": None, "lfs": False},
        {"path": "model.safetensors", "size": 2048, "sha256": SHA, "lfs": True},
    ]
    source = ModelSourceFactory(name="fixed", kind=ModelSource.Kind.MIRROR, endpoint="http://10.1.2.3")
    repo = ModelRepoFactory(source=source, repo_id=repo_id, commit="c" * 40, files=files, total_size=2048 + 10)
    return ModelArtifactFactory(repo=repo, host=host, status=status, path=path, bytes_total=2058, **fields)


def download_job(artifact, status=Job.Status.RUNNING, **fields) -> Job:
    return JobFactory(target=artifact, status=status, queue=artifact.host.queue, **fields)


def field_error(response, field: str) -> str:
    page = response.content.decode()
    marker = f'data-field-error="{field}">'
    assert marker in page, page[page.find("<main") :][:3000]
    return page.split(marker, 1)[1].split("</div>", 1)[0]


# -- adding ---------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_bad_repo_id_is_a_field_error(client, engineer, store):
    client.force_login(engineer)
    source = ModelSource.objects.get(name="Hugging Face Hub")
    response = client.post(
        "/models/add/", {"source": source.pk, "repo_id": "not a repo", "revision": "main", "host": store.pk}
    )
    assert response.status_code == 400
    assert "org/name" in field_error(response, "repo_id")
    assert not ModelArtifact.objects.exists() and not Job.objects.exists()


@pytest.mark.django_db
def test_a_mirror_off_the_allow_list_is_refused_on_the_source_field(client, engineer, store):
    client.force_login(engineer)
    source = ModelSourceFactory(name="rogue", kind=ModelSource.Kind.MIRROR, endpoint="http://10.99.0.1:9")
    response = client.post("/models/add/", {"source": source.pk, "repo_id": "org/model", "host": store.pk})
    assert response.status_code == 400
    assert "allow-list" in field_error(response, "source")
    assert not ModelRepo.objects.filter(repo_id="org/model").exists()


@pytest.mark.django_db
def test_a_gated_repo_needs_a_token_and_works_with_one(client, engineer, store, mirror, hub_server):
    hub_server.add_repo("org/gated", {"config.json": CONFIG}, gated=True)
    client.force_login(engineer)
    form = {"source": mirror.pk, "repo_id": "org/gated", "revision": "main", "host": store.pk}
    response = client.post("/models/add/", form)
    assert response.status_code == 400
    assert "gated" in field_error(response, "credential")
    assert not ModelArtifact.objects.exists()

    token = credential_create(actor=engineer, name="hf", value=hub_server.required_token)
    response = client.post("/models/add/", {**form, "credential": token.pk, "include": "*.json, *.safetensors"})
    artifact = ModelArtifact.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/models/{artifact.pk}/"
    assert artifact.repo.commit == hub_server.commit_sha("org/gated") and artifact.repo.gated
    job = Job.objects.get()
    assert job.params == {"credential_id": token.pk, "include": ["*.json", "*.safetensors"]}
    assert AuditEvent.objects.filter(action="secret.used", target_id=str(token.pk)).exists()


@pytest.mark.django_db
def test_adding_through_the_api_queues_one_download_per_host_and_commit(
    api, engineer, auditor, store, mirror, hub_server
):
    commit = hub_server.add_repo("org/tiny", {"config.json": CONFIG, "model.safetensors": b"\0" * 64})
    body = {"source": mirror.name, "repo_id": "org/tiny", "revision": "main", "host": store.name}
    api(auditor).post("/api/v1/models/", body, expected=403)

    first = api(engineer).post("/api/v1/models/", body, expected=202).data
    artifact = ModelArtifact.objects.get()
    assert first["id"] == artifact.pk and first["status"] == "pending" and first["repo"]["commit"] == commit
    assert {f["path"] for f in first["files"]} == {"config.json", "model.safetensors"}
    job = Job.objects.get()
    assert (job.kind, job.queue, job.target_id, job.status) == (
        "download",
        f"host.{store.name}",
        str(artifact.pk),
        "pending",
    )
    assert first["last_job"]["id"] == job.pk and first["progress"] == {}

    again = api(engineer).post("/api/v1/models/", {**body, "source": mirror.pk, "revision": commit}, expected=202)
    assert again.data["id"] == artifact.pk
    assert Job.objects.count() == 1 and ModelArtifact.objects.count() == 1

    ModelArtifact.objects.filter(pk=artifact.pk).update(status=ModelArtifact.Status.READY)
    ready = api(engineer).post("/api/v1/models/", body, expected=200)
    assert ready.data["id"] == artifact.pk and Job.objects.count() == 1


@pytest.mark.django_db
def test_an_unknown_revision_is_a_revision_error(api, engineer, store, mirror, hub_server):
    hub_server.add_repo("org/tiny", {"config.json": CONFIG})
    response = api(engineer).post(
        "/api/v1/models/",
        {"source": mirror.name, "repo_id": "org/tiny", "revision": "no-such-branch", "host": store.name},
        expected=400,
    )
    assert "revision" in response.data


# -- cancelling, deleting, garbage collection ------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_sets_the_flag_with_the_choice(api, client, engineer, auditor, store):
    artifact = make_artifact(store, status=ModelArtifact.Status.DOWNLOADING)
    job = download_job(artifact)
    api(auditor).post(f"/api/v1/models/{artifact.pk}/cancel/", {}, expected=403)
    response = api(engineer).post(f"/api/v1/models/{artifact.pk}/cancel/", {"delete_partial": True}, expected=202)
    job.refresh_from_db()
    assert response.data["id"] == job.pk and job.cancel_requested and job.cancel_delete_partial

    other = download_job(make_artifact(store, repo_id="org/other", status=ModelArtifact.Status.DOWNLOADING))
    client.force_login(engineer)
    response = client.post(f"/models/{other.target_id}/cancel/", {"delete_partial": "0"})
    other.refresh_from_db()
    assert response.status_code == 302 and other.cancel_requested and not other.cancel_delete_partial
    assert AuditEvent.objects.filter(action="job.cancel_requested").count() == 2


@pytest.mark.django_db
def test_nothing_to_cancel_is_a_400(api, engineer, store):
    artifact = make_artifact(store)
    response = api(engineer).post(f"/api/v1/models/{artifact.pk}/cancel/", {}, expected=400)
    assert "Nothing is downloading" in str(response.data)


@pytest.mark.django_db
def test_delete_is_refused_while_in_use(api, client, engineer, auditor, store):
    artifact = make_artifact(store)
    ArtifactUse.objects.create(artifact=artifact, holder="deployment:chat-7b")
    api(auditor).call("delete", f"/api/v1/models/{artifact.pk}/", 403)
    response = api(engineer).call("delete", f"/api/v1/models/{artifact.pk}/", 400)
    assert "deployment:chat-7b" in str(response.data)
    client.force_login(engineer)
    response = client.post(f"/models/{artifact.pk}/delete/", follow=True)
    assert "deployment:chat-7b" in response.content.decode()
    assert not Job.objects.exists()

    ArtifactUse.objects.all().delete()
    response = api(engineer).call("delete", f"/api/v1/models/{artifact.pk}/", 202)
    job = Job.objects.get()
    assert response.data["id"] == job.pk and job.kind == "delete" and job.queue == store.queue


@pytest.mark.django_db
def test_gc_lists_only_unused_ready_copies(api, client, engineer, auditor, store):
    unused = make_artifact(store, repo_id="org/unused", bytes_done=2058)
    used = make_artifact(store, repo_id="org/used")
    ArtifactUse.objects.create(artifact=used, holder="deployment:x")
    make_artifact(store, repo_id="org/downloading", status=ModelArtifact.Status.DOWNLOADING)
    make_artifact(store, repo_id="org/failed", status=ModelArtifact.Status.FAILED)

    listing = api(auditor).get("/api/v1/models/gc/").data
    assert [a["id"] for a in listing["candidates"]] == [unused.pk]
    assert listing["total_bytes"] == 2058
    client.force_login(auditor)
    page = client.get("/models/gc/").content.decode()
    assert f'data-artifact="{unused.pk}"' in page and f'data-artifact="{used.pk}"' not in page
    assert 'id="gc-run"' not in page  # auditors see, but may not collect

    api(auditor).post("/api/v1/models/gc/", {}, expected=403)
    client.force_login(engineer)
    assert client.post("/models/gc/").status_code == 302
    job = Job.objects.get()
    assert (job.kind, job.target_id) == ("delete", str(unused.pk))


# -- importing -------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_import_needs_an_absolute_directory_under_an_import_root(api, client, engineer, store, settings):
    settings.MODEL_IMPORT_ROOTS = ["/srv/models"]
    client.force_login(engineer)
    response = client.post("/models/import/", {"host": store.pk, "directory": "models/llama", "name": ""})
    assert response.status_code == 400
    assert "absolute path" in field_error(response, "directory")
    response = api(engineer).post(
        "/api/v1/models/import/", {"host": store.name, "directory": "models/llama"}, expected=400
    )
    assert "directory" in response.data

    for outside in ("/etc", "/srv/models/../../etc", "/srv/modelsX/llama"):
        response = client.post("/models/import/", {"host": store.pk, "directory": outside, "name": ""})
        assert response.status_code == 400, outside
    assert not ModelArtifact.objects.exists()
    response = client.post("/models/import/", {"host": store.pk, "directory": "/srv/models/llama-3", "name": ""})
    artifact = ModelArtifact.objects.get()
    assert response.status_code == 302 and artifact.imported and artifact.repo.repo_id == "llama-3"
    assert Job.objects.get().kind == "import"


# -- sources and the allow-list --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admins_add_mirrors_and_endpoints_others_only_read(api, client, admin, engineer, auditor):
    client.force_login(engineer)
    page = client.get("/models/sources/").content.decode()
    assert 'data-source="Hugging Face Hub"' in page and 'data-endpoint="huggingface.co"' in page
    assert 'id="source-form"' not in page and 'id="endpoint-form"' not in page
    assert client.post("/models/sources/", {"name": "m", "endpoint": "http://10.5.0.1"}).status_code == 403
    assert client.post("/models/sources/endpoints/", {"pattern": "10.5.0.0/16"}).status_code == 403

    client.force_login(admin)
    response = client.post("/models/sources/", {"name": "lab-mirror", "endpoint": "http://10.5.0.1:8080"})
    assert response.status_code == 400 and "allow-list" in field_error(response, "endpoint")
    assert client.post("/models/sources/endpoints/", {"pattern": "10.5.0.0/16", "note": "lab"}).status_code == 302
    response = client.post(
        "/models/sources/", {"name": "lab-mirror", "endpoint": "http://10.5.0.1:8080", "token": "hf_lab_secret"}
    )
    assert response.status_code == 302
    source = ModelSource.objects.get(name="lab-mirror")
    assert source.kind == "mirror" and source.token.reveal() == "hf_lab_secret"
    page = client.get("/models/sources/").content.decode()
    assert "hf_lab_secret" not in page and "data-token-set" in page

    listing = api(auditor).get("/api/v1/sources/").data["results"]
    lab = next(s for s in listing if s["name"] == "lab-mirror")
    assert lab["token"] == "********" and lab["url"] == "http://10.5.0.1:8080"
    api(engineer).post("/api/v1/sources/", {"name": "x", "endpoint": "http://10.5.0.2"}, expected=403)
    created = (
        api(admin)
        .post(
            "/api/v1/sources/",
            {"name": "api-mirror", "endpoint": "http://10.5.0.2", "token": "hf_api_secret"},
            expected=201,
        )
        .data
    )
    assert created["token"] == "********" and "hf_api_secret" not in json.dumps(created)
    response = api(admin).post("/api/v1/sources/", {"name": "api-mirror", "endpoint": "http://10.5.0.2"}, expected=400)
    assert "name" in response.data

    endpoint = AllowedEndpoint.objects.get(pattern="10.5.0.0/16")
    api(engineer).call("delete", f"/api/v1/endpoints/{endpoint.pk}/", 403)
    assert client.post(f"/models/sources/endpoints/{endpoint.pk}/remove/").status_code == 302
    assert not AllowedEndpoint.objects.filter(pk=endpoint.pk).exists()
    bad = api(admin).post("/api/v1/endpoints/", {"pattern": "http://x/y"}, expected=400)
    assert "pattern" in bad.data
    made = api(admin).post("/api/v1/endpoints/", {"pattern": "*.corp.example", "note": "corp"}, expected=201).data
    api(admin).call("delete", f"/api/v1/endpoints/{made['id']}/", 204)
    events = AuditEvent.objects.filter(action__startswith="endpoint.").order_by("id")
    assert list(events.values_list("action", flat=True)) == [
        "endpoint.allowed",
        "endpoint.removed",
        "endpoint.allowed",
        "endpoint.removed",
    ]


# -- jobs ------------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_job_log_pages_by_after(api, auditor, store):
    job = download_job(make_artifact(store), log_seq=5)
    JobLogLine.objects.bulk_create([JobLogLine(job=job, seq=n, text=f"line {n}") for n in range(1, 6)])
    first = api(auditor).get(f"/api/v1/jobs/{job.pk}/log/?after=0&limit=2").data
    assert [i["seq"] for i in first["items"]] == [1, 2] and first["has_more"] and first["next_after"] == 2
    second = api(auditor).get(f"/api/v1/jobs/{job.pk}/log/?after=2&limit=2").data
    assert [i["text"] for i in second["items"]] == ["line 3", "line 4"]
    last = api(auditor).get(f"/api/v1/jobs/{job.pk}/log/?after=4&limit=2").data
    assert [i["seq"] for i in last["items"]] == [5] and not last["has_more"] and last["next_after"] == 5
    assert api(auditor).get(f"/api/v1/jobs/{job.pk}/log/?after=5").data["items"] == []
    api(auditor).get(f"/api/v1/jobs/{job.pk}/log/?after=x", expected=400)

    detail = api(auditor).get(f"/api/v1/jobs/{job.pk}/").data
    assert detail["kind"] == "download" and detail["status"] == "running" and detail["log_seq"] == 5
    assert [j["id"] for j in api(auditor).get("/api/v1/jobs/?status=running").data["results"]] == [job.pk]


# -- pages -----------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_model_page_shows_progress_while_downloading(client, engineer, store):
    artifact = make_artifact(store, status=ModelArtifact.Status.DOWNLOADING)
    job = download_job(
        artifact,
        progress={
            "done": 1024,
            "total": 4096,
            "rate_bps": 2048,
            "eta_s": 95,
            "file": "model.safetensors",
            "file_done": 1024,
            "file_total": 2048,
        },
    )
    client.force_login(engineer)
    page = client.get(f"/models/{artifact.pk}/").content.decode()
    assert f'data-ws="/ws/jobs/{job.pk}/"' in page and 'data-active="1"' in page
    assert 'style="width: 25%"' in page and "1 min 35 s" in page and "model.safetensors" in page
    assert 'id="cancel-form"' in page and 'id="delete-form"' not in page
    assert 'data-file="model.safetensors"' in page and SHA in page  # from the repo's listing
    assert "console/job.js" in page
    assert f"/inventory/sizing/?source=org%2Fmodel&amp;revision={'c' * 40}" in page


@pytest.mark.django_db
def test_model_page_shows_files_manifest_uses_and_failure(client, auditor, store):
    manifest = {
        "repo": "org/model",
        "commit": "c" * 40,
        "files": [{"path": "model.safetensors", "size": 2048, "sha256": "ef" * 32}],
    }
    artifact = make_artifact(store, manifest=manifest, path="/srv/models/org--model/" + "c" * 40)
    ArtifactUse.objects.create(artifact=artifact, holder="deployment:chat")
    download_job(
        artifact,
        status=Job.Status.FAILED,
        failure_cause="checksum_mismatch",
        failure_detail="model.safetensors did not match its sha256.",
        next_step="Start it again.",
    )
    client.force_login(auditor)
    page = client.get(f"/models/{artifact.pk}/").content.decode()
    assert 'id="manifest"' in page and "ef" * 32 in page and 'data-file="config.json"' not in page
    assert 'data-holder="deployment:chat"' in page
    assert "data-cause>checksum_mismatch" in page and "Start it again." in page
    assert 'data-active="0"' in page and 'id="cancel-form"' not in page and 'id="delete-form"' not in page


@pytest.mark.django_db
def test_models_list_searches_filters_and_pages(client, auditor, engineer, store):
    client.force_login(engineer)
    empty = client.get("/models/").content.decode()
    assert 'id="models-empty"' in empty and 'id="add-model"' in empty and 'id="import-model"' in empty
    other = HostFactory(name="gpu-store-2", manual=True)
    for n in range(30):
        make_artifact(store if n % 2 else other, repo_id=f"org/model-{n:02d}")
    make_artifact(store, repo_id="org/gone", status=ModelArtifact.Status.DELETED)
    downloading = make_artifact(store, repo_id="acme/big", status=ModelArtifact.Status.DOWNLOADING, bytes_done=1029)

    client.force_login(auditor)
    page = client.get("/models/").content.decode()
    assert page.count("data-artifact=") == 25 and "Page 1 of 2" in page and 'id="add-model"' not in page
    assert "org/gone" not in page
    page = client.get("/models/?q=acme").content.decode()
    assert page.count("data-artifact=") == 1 and f'data-artifact="{downloading.pk}"' in page
    assert "data-percent>50%" in page
    page = client.get(f"/models/?host={other.name}&status=ready").content.decode()
    assert page.count("data-artifact=") == 15
    page = client.get("/models/?status=deleted").content.decode()
    assert "org/gone" in page and page.count("data-artifact=") == 1
    page = client.get("/models/?q=nothing-like-this").content.decode()
    assert "No model matches" in page

    listing = client.get("/api/v1/models/?host__name=gpu-store-2&search=model-0").json()
    assert {a["repo_id"] for a in listing["results"]} == {
        "org/model-00",
        "org/model-02",
        "org/model-04",
        "org/model-06",
        "org/model-08",
    }
    assert listing["count"] == 5


# -- the job stream --------------------------------------------------------------------------------------------------


async def _connect(user, job_id: int) -> tuple[WebsocketCommunicator, bool, int | None]:
    cookie = await database_sync_to_async(session_cookie)(user)
    socket = WebsocketCommunicator(application, f"/ws/jobs/{job_id}/", headers=[ORIGIN, (b"cookie", cookie)])
    connected, code = await socket.connect()
    return socket, connected, code


async def _items(socket, count: int) -> list[dict]:
    items: list[dict] = []
    while len(items) < count:
        message = await socket.receive_json_from(timeout=10)
        if message["type"] == "items":
            items.extend(message["items"])
    return items


@pytest.mark.django_db(transaction=True)
async def test_job_stream_sends_the_backlog_then_live_lines(redis_url):
    from console.streams import publish

    def setup():
        job = JobFactory(status=Job.Status.RUNNING, log_seq=2)
        JobLogLine.objects.create(job=job, seq=1, text="attempt 1 of 3")
        JobLogLine.objects.create(job=job, seq=2, stream="progress", data={"done": 1, "total": 4})
        return job

    job = await database_sync_to_async(setup)()
    auditor = await database_sync_to_async(UserFactory)(roles=["auditor"])
    socket, connected, _code = await _connect(auditor, job.pk)
    assert connected
    await socket.send_json_to({"type": "subscribe", "after": 0})
    backlog = await _items(socket, 2)
    assert [(i["seq"], i["stream"]) for i in backlog] == [(1, "log"), (2, "progress")]
    assert (await socket.receive_json_from(timeout=10)) == {"type": "caught_up", "seq": 2}

    line = await database_sync_to_async(JobLogLine.objects.create)(job=job, seq=3, text="succeeded")
    await database_sync_to_async(publish)(job.stream, [line.as_item()], wait=2)
    live = await _items(socket, 1)
    assert [(i["seq"], i["text"]) for i in live] == [(3, "succeeded")]
    await socket.disconnect()

    # A reconnect after the last seq gets nothing again.
    socket, connected, _code = await _connect(auditor, job.pk)
    await socket.send_json_to({"type": "subscribe", "after": 3})
    assert (await socket.receive_json_from(timeout=10)) == {"type": "caught_up", "seq": 3}
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_job_stream_of_a_missing_job_closes_4404_for_viewers_only(redis_url):
    auditor = await database_sync_to_async(UserFactory)(roles=["auditor"])
    nobody = await database_sync_to_async(UserFactory)(roles=[])
    _socket, connected, code = await _connect(auditor, 987654)
    assert not connected and code == 4404
    _socket, connected, code = await _connect(nobody, 987654)
    assert not connected and code == 4403
