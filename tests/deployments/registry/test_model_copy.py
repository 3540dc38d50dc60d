"""Copying a model between hosts through the console: a directory import on host A reaches host B byte for byte over
the internal route (a real HTTP server: pytest-django's live_server), verified against the source's sha256s, resumed
after a cut, and published as a ready copy on B; a launch placed on B makes the copy first. The route opens only to
the copy's own jobs, only for the source's files, and only while the source is ready."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from django.test import Client

from audit.models import AuditEvent
from console.errors import ApplicationError
from deployments.models import ArtifactUse, Deployment, Job, ModelArtifact, ModelSource
from deployments.registry.copies import artifact_copy
from deployments.registry.copy_relay import copy_token, relay_dir
from deployments.registry.services import artifact_delete, artifact_on_host
from deployments.serving import services as lifecycle
from deployments.serving.planning import verdict
from deployments.serving.specs import clean_spec
from tests.factories import ModelArtifactFactory
from tests.support.deploy_fixtures import process_host
from workers import runner
from workers.model_copy import CopyError, send_files

WEIGHTS = os.urandom(3 * 2**20 + 123)  # several 1 MiB reads, and a size no piece boundary divides
FILES = {
    "config.json": json.dumps(
        {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}
    ).encode(),
    "tokenizer.json": b"{}",
    "weights/model.safetensors": WEIGHTS,
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def imported(db, tmp_path):
    """A ready directory import on host-a (its files and sha256s as the import job records them)."""
    a, b = process_host("host-a", gpus=1), process_host("host-b", gpus=2)
    directory = tmp_path / "a-store" / "imports" / "tiny-local"
    for name, data in FILES.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    (tmp_path / "outside.txt").write_bytes(b"secret")
    repo = ModelSource.objects.create(name="local", kind=ModelSource.Kind.LOCAL).repos.create(
        repo_id="tests/tiny-local", requested_revision="local"
    )
    artifact = ModelArtifact.objects.create(
        repo=repo,
        host=a,
        path=str(directory),
        status=ModelArtifact.Status.READY,
        imported=True,
        files_sha256={name: sha(data) for name, data in FILES.items()},
        manifest={"source": "local directory", "files": []},
        bytes_total=sum(map(len, FILES.values())),
    )
    return artifact, b


def copy_jobs(copy: ModelArtifact) -> dict[str, Job]:
    jobs = Job.objects.filter(kind=Job.Kind.COPY, target_id=str(copy.pk))
    return {job.params["role"]: job for job in jobs}


def as_host(settings, tmp_path, name: str) -> None:
    """Run the next job as that host's agent would: its own model store."""
    settings.MODEL_STORE = tmp_path / f"{name}-store"


@pytest.mark.django_db(transaction=True)
def test_an_import_is_copied_to_another_host_over_the_internal_route_and_resumes(
    admin, imported, live_server, settings, tmp_path
):
    source, b = imported
    settings.CONSOLE_INTERNAL_URL = live_server.url
    settings.MODEL_COPY_RELAY = tmp_path / "console-relay"
    copy = artifact_copy(actor=admin, artifact=source, host=b)
    jobs = copy_jobs(copy)
    assert (jobs["send"].queue, jobs["receive"].queue) == ("host.host-a", "host.host-b")
    assert ArtifactUse.objects.filter(artifact=source).exists()  # the source cannot be deleted mid-copy
    with pytest.raises(ApplicationError):
        artifact_copy(actor=admin, artifact=source, host=b)  # on its way already

    # A transfer cut after 1 MiB + 7 bytes of the weights: the console kept them, the sender resumes there.
    relayed = relay_dir(copy.pk) / "weights" / "model.safetensors"
    relayed.parent.mkdir(parents=True)
    relayed.with_name(relayed.name + ".part").write_bytes(WEIGHTS[: 2**20 + 7])
    as_host(settings, tmp_path, "a")
    assert runner.run(jobs["send"].pk) == "succeeded"
    assert Job.objects.get(pk=jobs["send"].pk).result["bytes_sent"] == sum(map(len, FILES.values())) - (2**20 + 7)

    # The receiver was cut too: half of the weights in its staging .part; it asks for the rest with Range.
    staging = tmp_path / "b-store" / ".staging" / f"artifact-{copy.pk}" / "weights"
    staging.mkdir(parents=True)
    (staging / "model.safetensors.part").write_bytes(WEIGHTS[: len(WEIGHTS) // 2])
    as_host(settings, tmp_path, "b")
    assert runner.run(jobs["receive"].pk) == "succeeded"

    copy.refresh_from_db()
    assert copy.status == ModelArtifact.Status.READY and copy.imported
    final = tmp_path / "b-store" / "tests--tiny-local" / f"copy-of-{source.pk}"
    assert copy.path == str(final)
    assert {name: (final / name).read_bytes() for name in FILES} == FILES
    assert copy.files_sha256 == source.files_sha256
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["copied_from"]["host"] == "host-a" and len(manifest["files"]) == 3
    assert not relay_dir(copy.pk).exists()  # the console dropped its relayed files
    assert not ArtifactUse.objects.filter(artifact=source).exists()
    fetched = [json.loads(e.detail) for e in AuditEvent.objects.filter(action="model.copy_fetched")]
    assert {f["file"]: f["offset"] for f in fetched} == {
        "config.json": 0,
        "tokenizer.json": 0,
        "weights/model.safetensors": len(WEIGHTS) // 2,  # the receiver asked only for the rest
    }
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert {"model.copy_requested", "model.copy_relayed", "model.copy_fetched", "model.copied"} <= set(actions)


@pytest.mark.django_db(transaction=True)
def test_a_relayed_file_damaged_at_the_console_fails_the_copy_and_nothing_is_published(
    admin, imported, live_server, settings, tmp_path
):
    source, b = imported
    settings.CONSOLE_INTERNAL_URL = live_server.url
    settings.MODEL_COPY_RELAY = tmp_path / "console-relay"
    copy = artifact_copy(actor=admin, artifact=source, host=b)
    jobs = copy_jobs(copy)
    as_host(settings, tmp_path, "a")
    assert runner.run(jobs["send"].pk) == "succeeded"
    relayed = relay_dir(copy.pk) / "weights" / "model.safetensors"
    relayed.write_bytes(b"\0" + WEIGHTS[1:])  # same size, one byte changed on the console's disk
    as_host(settings, tmp_path, "b")
    assert runner.run(jobs["receive"].pk) == "failed"
    job = Job.objects.get(pk=jobs["receive"].pk)
    assert "sha256" in job.failure_detail
    copy.refresh_from_db()
    assert copy.status == ModelArtifact.Status.FAILED
    assert not (tmp_path / "b-store" / "tests--tiny-local").exists()


def test_the_route_opens_only_to_the_copys_jobs_for_the_sources_files(admin, imported, settings, tmp_path):
    source, b = imported
    settings.MODEL_COPY_RELAY = tmp_path / "console-relay"
    copy = artifact_copy(actor=admin, artifact=source, host=b)
    jobs = copy_jobs(copy)
    send, receive = copy_token(jobs["send"]), copy_token(jobs["receive"])
    client = Client(enforce_csrf_checks=True)
    url = f"/internal/models/copies/{copy.pk}/files/"

    def put(relpath: str, token: str, data: bytes, start: int = 0, total: int | None = None):
        total = len(data) if total is None else total
        return client.put(
            url + relpath,
            data=data,
            content_type="application/octet-stream",
            HTTP_AUTHORIZATION=f"Bearer {token}",
            HTTP_CONTENT_RANGE=f"bytes {start}-{start + len(data) - 1}/{total}",
        )

    def get(relpath: str, token: str | None, **headers):
        if token:
            headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        return client.get(url + relpath, **headers)

    assert get("config.json", None).status_code == 401
    assert get("config.json", "forged").status_code == 401
    assert get("config.json", send).status_code == 403  # the sender's token does not read
    assert put("config.json", receive, FILES["config.json"]).status_code == 403  # nor the receiver's write
    assert get("config.json", receive).status_code == 409  # not relayed yet: the receiver waits
    for outside in ("../../outside.txt", "other.bin", "weights/../../x"):
        assert put(outside, send, b"x").status_code == 404, outside

    assert put("config.json", send, FILES["config.json"][:10], total=len(FILES["config.json"])).status_code == 200
    skipped = put("config.json", send, FILES["config.json"][20:], start=20, total=len(FILES["config.json"]))
    assert skipped.status_code == 416  # pieces arrive in order: the console says where to go on
    assert (
        put("config.json", send, FILES["config.json"][10:], start=10, total=len(FILES["config.json"])).status_code
        == 200
    )
    ranged = get("config.json", receive, HTTP_RANGE="bytes=5-")
    assert ranged.status_code == 206
    assert b"".join(ranged.streaming_content) == FILES["config.json"][5:]
    assert ranged["X-Content-SHA256"] == sha(FILES["config.json"])

    assert put("tokenizer.json", send, b"[]").status_code == 422  # not the bytes the source recorded
    ModelArtifact.objects.filter(pk=source.pk).update(status=ModelArtifact.Status.CORRUPT)
    assert get("config.json", receive).status_code == 404  # only a ready source is copied
    ModelArtifact.objects.filter(pk=source.pk).update(status=ModelArtifact.Status.READY)
    Job.objects.filter(pk=jobs["receive"].pk).update(status=Job.Status.CANCELLED)
    assert get("config.json", receive).status_code == 403  # an ended job's token no longer works


def test_a_launch_placed_on_a_host_without_the_import_copies_it_there_first(admin, imported):
    source, b = imported
    spec = {"artifact": source.pk, "device": "gpu", "num_shard": 2, "max_input_tokens": 200, "max_total_tokens": 256}
    plan = verdict(clean_spec(spec))
    assert plan.fits and plan.host == "host-b" and plan.copy_to_host  # host-a has one GPU, host-b two

    deployment = lifecycle.deployment_create(actor=admin, name="copied", spec=spec)
    assert deployment.state == Deployment.State.DOWNLOADING and deployment.host == b  # the server waits for the copy
    copy = ModelArtifact.objects.get(repo=source.repo, host=b)
    assert copy.status == ModelArtifact.Status.PENDING
    assert deployment.job.params["artifact"] == copy.pk
    jobs = copy_jobs(copy)
    assert (jobs["send"].queue, jobs["receive"].queue) == ("host.host-a", "host.host-b")


def test_admins_copy_from_the_models_page_and_the_api_engineers_cannot(api, client, admin, engineer, imported):
    source, b = imported
    client.force_login(engineer)
    assert 'id="copy-link"' not in client.get(f"/models/{source.pk}/").content.decode()
    assert client.post(f"/models/{source.pk}/copy/", {"host": b.pk}).status_code == 403
    api(engineer).post(f"/api/v1/models/{source.pk}/copy/", {"host": "host-b"}, expected=403)
    assert not ModelArtifact.objects.filter(host=b).exists()

    client.force_login(admin)
    detail = client.get(f"/models/{source.pk}/").content.decode()
    assert f'href="/models/{source.pk}/copy/" id="copy-link"' in detail
    form = client.get(f"/models/{source.pk}/copy/").content.decode()
    assert ">host-b</option>" in form and ">host-a</option>" not in form  # not to the host that holds it
    response = client.post(f"/models/{source.pk}/copy/", {"host": b.pk})
    copy = ModelArtifact.objects.get(repo=source.repo, host=b)
    assert response.status_code == 302 and response["Location"] == f"/models/{copy.pk}/"
    assert set(copy_jobs(copy)) == {"send", "receive"}
    event = AuditEvent.objects.get(action="model.copy_requested")
    assert event.actor_name == admin.get_username() and json.loads(event.detail)["to"] == "host-b"

    again = api(admin).post(f"/api/v1/models/{source.pk}/copy/", {"host": "host-b"}, expected=400).data
    assert "already holds" in json.dumps(again)
    c = process_host("host-c", gpus=1)
    made = api(admin).post(f"/api/v1/models/{source.pk}/copy/", {"host": "host-c"}, expected=202).data
    assert made["host"] in ("host-c", c.pk) and made["status"] == "pending"


def test_the_deploy_review_says_a_copy_is_made_first_on_a_host_without_it(client, admin, imported):
    source, _b = imported
    client.force_login(admin)
    form = {
        "artifact": source.pk,
        "name": "copied-chat",
        "restart_policy": "on-failure",
        "device": "gpu",
        "num_shard": 2,
        "max_input_tokens": 128,
        "max_total_tokens": 256,
        "max_concurrent_requests": 128,
        "cuda_memory_fraction": 1.0,
        "review": "1",
    }
    body = client.post("/deployments/new/", form).content.decode()
    note = body.split('data-plan="copy"', 1)[1].split("</div>", 1)[0]
    assert "hidden" not in note.split(">", 1)[0] and "a copy is made first" in note
    assert "host-b" in body


def test_a_hub_model_is_copied_rather_than_downloaded_on_a_closed_site_and_an_adapter_needs_its_base(
    admin, settings, tmp_path
):
    a, b = process_host("host-a", gpus=1), process_host("host-b", gpus=1)
    hub = ModelArtifactFactory(host=a, files_sha256={"config.json": sha(b"{}")})
    settings.MODEL_COPY_FIRST = False
    downloaded = artifact_on_host(actor=admin, artifact=hub, host=b)
    assert Job.objects.get(target_id=str(downloaded.pk)).kind == Job.Kind.DOWNLOAD  # the Hub is reachable

    c = process_host("host-c", gpus=1)
    settings.MODEL_COPY_FIRST = True  # hosts that cannot reach the Hub
    copied = artifact_on_host(actor=admin, artifact=hub, host=c)
    assert set(copy_jobs(copied)) == {"send", "receive"}
    assert not Job.objects.filter(kind=Job.Kind.DOWNLOAD, target_id=str(copied.pk)).exists()

    adapter = ModelArtifactFactory(
        host=a, kind=ModelArtifact.Kind.ADAPTER, base=hub, imported=True, files_sha256={"adapter.bin": sha(b"x")}
    )
    with pytest.raises(ApplicationError) as refused:
        artifact_copy(actor=admin, artifact=adapter, host=b)  # b's copy of the base is still downloading
    assert "no ready copy of the base model" in refused.value.message
    ModelArtifact.objects.filter(pk=downloaded.pk).update(status=ModelArtifact.Status.READY)
    assert artifact_copy(actor=admin, artifact=adapter, host=b).base_id == downloaded.pk  # the base on b


@pytest.mark.django_db(transaction=True)
def test_deleting_the_copy_of_an_import_removes_its_files_but_never_the_imported_directory(
    admin, imported, live_server, settings, tmp_path
):
    source, b = imported
    settings.CONSOLE_INTERNAL_URL = live_server.url
    settings.MODEL_COPY_RELAY = tmp_path / "console-relay"
    copy = artifact_copy(actor=admin, artifact=source, host=b)
    jobs = copy_jobs(copy)
    as_host(settings, tmp_path, "a")
    assert runner.run(jobs["send"].pk) == "succeeded"
    as_host(settings, tmp_path, "b")
    assert runner.run(jobs["receive"].pk) == "succeeded"
    copy.refresh_from_db()
    assert runner.run(artifact_delete(actor=admin, artifact=copy).pk) == "succeeded"
    assert not os.path.exists(copy.path)  # the console made it: the console removes it

    as_host(settings, tmp_path, "a")
    assert runner.run(artifact_delete(actor=admin, artifact=source).pk) == "succeeded"
    assert (tmp_path / "a-store" / "imports" / "tiny-local" / "config.json").exists()  # the user's directory stays


def test_the_sender_reads_nothing_outside_the_models_directory(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    (tmp_path / "secret.txt").write_bytes(b"not the model's")
    (directory / "weights.bin").symlink_to(tmp_path / "secret.txt")  # a link inside that points out
    for relpath in ("../secret.txt", "weights.bin", "/etc/passwd"):
        with pytest.raises(CopyError, match="outside"):
            # The console's address answers nothing: the refusal comes before any request.
            send_files("http://127.0.0.1:9", 1, "token", directory, {relpath: sha(b"x")}, retries=0)
