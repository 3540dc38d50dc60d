"""Datasets under test: a store in tmp_path, a team the engineer belongs to, and an upload helper that goes
through the real chunked API."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from deployments.datasets import services

CANARY = "CANARY-7f3e9b21-do-not-leak"


def chat(user: str, answer: str | None = "Fine.") -> dict:
    messages = [{"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def jsonl(records: list) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


@pytest.fixture(autouse=True)
def dataset_store(settings, tmp_path):
    settings.DATASET_STORE = tmp_path / "datasets"
    return settings.DATASET_STORE


@pytest.fixture
def team(engineer):
    team = Group.objects.create(name="nlp-team")
    team.user_set.add(engineer)
    return team


@pytest.fixture
def dataset(admin, team):
    return services.dataset_create(actor=admin, name="support-chats", team=team, description="tickets")


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def upload(client: APIClient, dataset_id: int, content: bytes, *, filename="data.jsonl", chunk=1 << 20, **extra):
    """Open, send in chunks, complete: the last response (the version, or the refusal)."""
    started = client.post(
        "/api/v1/datasets/uploads/",
        {"dataset": dataset_id, "filename": filename, "size": len(content), **extra},
        format="json",
    )
    if started.status_code != 201:
        return started
    upload_id = started.json()["id"]
    for offset in range(0, len(content), chunk):
        sent = client.put(
            f"/api/v1/datasets/uploads/{upload_id}/?offset={offset}",
            content[offset : offset + chunk],
            content_type="application/octet-stream",
        )
        assert sent.status_code == 200, sent.content
    return client.post(f"/api/v1/datasets/uploads/{upload_id}/complete/", {}, format="json")
