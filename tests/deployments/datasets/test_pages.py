"""Dataset pages: the list and the form to add one, a dataset's versions with schema and problems, the upload
widget for stewards, and the row preview for view_data holders only (audited)."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from deployments.models import Dataset
from tests.deployments.datasets.conftest import api, chat, jsonl, upload

pytestmark = pytest.mark.django_db


def test_an_admin_adds_a_dataset_from_the_list_page(client, admin, team):
    client.force_login(admin)
    page = client.get("/datasets/").content.decode()
    assert 'id="dataset-add-form"' in page and 'data-nav="datasets"' in page
    response = client.post("/datasets/", {"name": "from-page", "team": team.pk, "description": "d"})
    dataset = Dataset.objects.get(name="from-page")
    assert response.status_code == 302 and response["Location"] == f"/datasets/{dataset.pk}/"
    detail = client.get(response["Location"]).content.decode()
    assert 'id="dataset-upload"' in detail and "console/dataset_upload.js" in detail


def test_a_bad_name_stays_on_the_form_with_its_error(client, admin, team):
    client.force_login(admin)
    response = client.post("/datasets/", {"name": "no spaces", "team": team.pk})
    assert response.status_code == 400 and 'data-field-error="name"' in response.content.decode()
    assert not Dataset.objects.exists()


def test_an_engineer_sees_schema_counts_and_problems_but_no_rows_or_upload(client, admin, engineer, dataset):
    upload(api(admin), dataset.pk, jsonl([chat("hello there")]))
    client.force_login(engineer)
    listing = client.get("/datasets/").content.decode()
    assert "support-chats" in listing and 'id="dataset-add-form"' not in listing
    page = client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "<code>messages</code>" in page and 'id="can-use"' in page
    assert "hello there" not in page and "data-preview" not in page and 'id="dataset-upload"' not in page
    assert client.get(f"/datasets/{dataset.pk}/versions/1/preview/").status_code == 403
    assert client.post(f"/datasets/{dataset.pk}/delete/").status_code == 403


def test_an_auditor_previews_rows_on_a_page_and_the_preview_is_audited(client, admin, auditor, dataset):
    upload(api(admin), dataset.pk, jsonl([chat("hello there")]))
    client.force_login(auditor)
    assert "data-preview" in client.get(f"/datasets/{dataset.pk}/").content.decode()
    page = client.get(f"/datasets/{dataset.pk}/versions/1/preview/").content.decode()
    assert "hello there" in page and 'id="preview-table"' in page
    assert AuditEvent.objects.filter(action="dataset.previewed", actor_id=auditor.pk).count() == 1


def test_an_admin_deletes_a_dataset_from_its_page(client, admin, dataset):
    client.force_login(admin)
    response = client.post(f"/datasets/{dataset.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/datasets/"
    assert not Dataset.objects.exists()


def test_the_upload_script_is_served(client, admin):
    from django.contrib.staticfiles import finders

    assert finders.find("console/dataset_upload.js")
