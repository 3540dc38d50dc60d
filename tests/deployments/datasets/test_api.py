"""The datasets API: add a dataset, upload a version in chunks, read what an engineer may read, preview rows with
view_data (audited), delete."""

from __future__ import annotations

import hashlib

import pytest

from audit.models import AuditEvent
from deployments.datasets import storage
from deployments.models import DatasetUpload, DatasetVersion
from tests.deployments.datasets.conftest import api, chat, jsonl, upload

pytestmark = pytest.mark.django_db


def test_an_admin_adds_a_dataset_and_uploads_a_version_in_chunks(admin, team, dataset_store):
    client = api(admin)
    created = client.post("/api/v1/datasets/", {"name": "faq", "team": team.pk}, format="json")
    assert created.status_code == 201, created.content
    content = jsonl([chat(f"question {i}") for i in range(3000)])
    assert len(content) > 300_000  # four chunks
    done = upload(client, created.json()["id"], content, chunk=100_000)
    assert done.status_code == 201, done.content
    body = done.json()
    assert body["version"] == 1 and body["row_count"] == 3000 and body["shape"] == "chat"
    assert body["sha256"] == hashlib.sha256(content).hexdigest() and body["size"] == len(content)
    assert body["columns"] == {"messages": "list"} and body["validation_errors"] == []
    version = DatasetVersion.objects.get()
    assert storage.absolute(version.path).read_bytes() == content
    assert not list((dataset_store / "uploads").iterdir())  # the part file became the version
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert "dataset.added" in actions and "dataset.versioned" in actions


def test_a_changed_upload_is_a_new_version_and_the_same_file_is_refused(admin, dataset):
    client = api(admin)
    first = jsonl([{"prompt": "a", "completion": "b"}])
    assert upload(client, dataset.pk, first).status_code == 201
    again = upload(client, dataset.pk, first)
    assert again.status_code == 400 and "version 1 already" in again.json()["file"][0]
    second = upload(client, dataset.pk, jsonl([{"prompt": "a", "completion": "c"}]))
    assert second.status_code == 201 and second.json()["version"] == 2
    listed = client.get(f"/api/v1/datasets/{dataset.pk}/versions/").json()["results"]
    assert [v["version"] for v in listed] == [2, 1]
    assert listed[0]["sha256"] != listed[1]["sha256"]


@pytest.mark.parametrize(
    ("filename", "content", "shape", "rows"),
    [
        ("qa.csv", b'prompt,completion\nwhat,that\n"multi\nline",ok\n', "prompt_completion", 2),
        ("notes.json", b'[{"text": "one"},\n {"text": "two"}]', "text", 2),
        ("raw.parquet", b"PAR1" + b"\0" * 16 + b"PAR1", "", None),
    ],
)
def test_csv_json_and_parquet_are_accepted(admin, dataset, filename, content, shape, rows):
    done = upload(api(admin), dataset.pk, content, filename=filename)
    assert done.status_code == 201, done.content
    assert (done.json()["shape"], done.json()["row_count"]) == (shape, rows)


def test_an_engineer_of_the_team_reads_schema_but_not_rows_and_cannot_change_it(admin, engineer, dataset):
    upload(api(admin), dataset.pk, jsonl([chat("hello")]))
    client = api(engineer)
    assert [d["name"] for d in client.get("/api/v1/datasets/").json()["results"]] == ["support-chats"]
    assert client.get(f"/api/v1/datasets/{dataset.pk}/versions/1/").status_code == 200
    assert client.get(f"/api/v1/datasets/{dataset.pk}/versions/1/preview/").status_code == 403
    assert client.delete(f"/api/v1/datasets/{dataset.pk}/").status_code == 403
    opened = client.post("/api/v1/datasets/uploads/", {"dataset": dataset.pk, "filename": "x.jsonl", "size": 3})
    assert opened.status_code == 403


def test_an_engineer_outside_the_team_does_not_see_it(admin, dataset):
    from tests.factories import UserFactory

    outsider = UserFactory(username="olga-outsider", roles=["engineer"])
    client = api(outsider)
    assert client.get("/api/v1/datasets/").json()["results"] == []
    assert client.get(f"/api/v1/datasets/{dataset.pk}/").status_code == 404
    assert AuditEvent.objects.filter(action="permission.denied", actor_id=outsider.pk).exists()


def test_a_team_granted_manage_datasets_on_itself_stewards_its_datasets(admin, engineer, team, dataset):
    from console.accounts.services.access import object_grant

    object_grant(actor=admin, grantee=team, action="manage_datasets", target=team)
    client = api(engineer)
    assert upload(client, dataset.pk, jsonl([{"text": "a"}])).status_code == 201
    mine = client.post("/api/v1/datasets/", {"name": "team-own", "team": team.pk}, format="json")
    assert mine.status_code == 201
    assert client.get(f"/api/v1/datasets/{dataset.pk}/versions/1/preview/").status_code == 403  # still no rows


def test_a_view_data_grant_lets_a_user_preview_that_dataset(admin, engineer, dataset):
    from console.accounts.services.access import object_grant

    upload(api(admin), dataset.pk, jsonl([chat("hello")]))
    object_grant(actor=admin, grantee=engineer, action="view_data", target=dataset)
    preview = api(engineer).get(f"/api/v1/datasets/{dataset.pk}/versions/1/preview/?limit=5")
    assert preview.status_code == 200 and preview.json()["rows"] == [chat("hello")]


def test_an_auditor_previews_rows_and_each_preview_is_audited(admin, auditor, dataset):
    upload(api(admin), dataset.pk, jsonl([chat(f"q{i}") for i in range(30)]))
    preview = api(auditor).get(f"/api/v1/datasets/{dataset.pk}/versions/1/preview/?limit=3")
    assert preview.status_code == 200 and len(preview.json()["rows"]) == 3
    event = AuditEvent.objects.get(action="dataset.previewed")
    assert event.actor_id == auditor.pk and '"rows_shown":3' in event.detail.replace(" ", "")


def test_deleting_a_version_and_a_dataset_removes_their_files(admin, dataset, django_capture_on_commit_callbacks):
    client = api(admin)
    upload(client, dataset.pk, jsonl([{"text": "a"}]))
    upload(client, dataset.pk, jsonl([{"text": "b"}]))
    first, second = (storage.absolute(v.path) for v in DatasetVersion.objects.order_by("version"))
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(f"/api/v1/datasets/{dataset.pk}/versions/1/").status_code == 204
    assert not first.exists() and second.exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(f"/api/v1/datasets/{dataset.pk}/").status_code == 204
    assert not second.exists() and not DatasetVersion.objects.exists()
    assert AuditEvent.objects.filter(action="dataset.deleted").count() == 2


def test_a_version_a_job_references_cannot_be_deleted(admin, dataset):
    from deployments.models import Job

    upload(api(admin), dataset.pk, jsonl([{"text": "a"}]))
    version = DatasetVersion.objects.get()
    # A fine-tune names the version in its lineage; statistics only read it and do not hold it.
    Job.objects.create(kind=Job.Kind.DATASET_STATS, params={"dataset_version_id": version.pk})
    Job.objects.create(kind=Job.Kind.FINETUNE, params={"dataset_version_id": version.pk})
    refused = api(admin).delete(f"/api/v1/datasets/{dataset.pk}/versions/1/")
    assert refused.status_code == 400 and "used by job" in refused.json()["version"][0]
    assert "dataset_stats" not in refused.json()["version"][0]
    assert api(admin).delete(f"/api/v1/datasets/{dataset.pk}/").status_code == 400
    assert DatasetVersion.objects.filter(pk=version.pk).exists()


def test_an_upload_that_is_not_finished_registers_nothing(admin, dataset):
    client = api(admin)
    opened = client.post(
        "/api/v1/datasets/uploads/", {"dataset": dataset.pk, "filename": "a.jsonl", "size": 100}, format="json"
    ).json()
    client.put(f"/api/v1/datasets/uploads/{opened['id']}/?offset=0", b'{"text": "a"}\n', content_type="x/y")
    done = client.post(f"/api/v1/datasets/uploads/{opened['id']}/complete/", {}, format="json")
    assert done.status_code == 400 and "send the rest from offset 14" in done.json()["upload"][0]
    assert not DatasetVersion.objects.exists()
    assert DatasetUpload.objects.get().received == 14
