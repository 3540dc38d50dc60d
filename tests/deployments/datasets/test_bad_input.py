"""Bad input, each a clear error that says where, and nothing half-created: a malformed JSONL line, a chat record
without an assistant turn, a zero-row file, a file over DATASET_UPLOAD_MAX_BYTES, a chunk over 8 MiB, a chunk at the
wrong offset; and a broken upload resumed from its offset ends with the right sha256."""

from __future__ import annotations

import hashlib
import json

import pytest

from deployments.datasets import storage
from deployments.datasets.services import CHUNK_MAX_BYTES
from deployments.models import DatasetUpload, DatasetVersion
from tests.deployments.datasets.conftest import api, chat, jsonl, upload

pytestmark = pytest.mark.django_db


def test_a_malformed_jsonl_line_is_named_by_its_line_and_nothing_is_registered(admin, dataset, dataset_store):
    content = jsonl([chat("a"), chat("b")]) + b'{"messages": [{"role": "user"\n' + jsonl([chat("c")])
    refused = upload(api(admin), dataset.pk, content)
    assert refused.status_code == 400
    errors = refused.json()["errors"]
    assert errors[0]["line"] == 3 and errors[0]["message"].startswith("line 3: not valid JSON")
    assert not DatasetVersion.objects.exists()
    assert DatasetUpload.objects.get().status == "failed"
    assert not list((dataset_store / "uploads").iterdir())


def test_a_chat_record_without_an_assistant_turn_is_named_with_its_field(admin, dataset):
    refused = upload(api(admin), dataset.pk, jsonl([chat("a"), chat("b"), chat("c", answer=None)]))
    assert refused.status_code == 400
    assert [e["message"] for e in refused.json()["errors"]] == ["line 3: `messages` has no assistant turn"]
    assert not DatasetVersion.objects.exists()


def test_a_zero_row_file_is_an_error(admin, dataset):
    refused = upload(api(admin), dataset.pk, b"\n\n  \n")
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["message"] == "the file has no rows"
    empty = api(admin).post(
        "/api/v1/datasets/uploads/", {"dataset": dataset.pk, "filename": "e.jsonl", "size": 0}, format="json"
    )
    assert empty.status_code == 400 and "needs rows" in empty.json()["size"][0]


def test_a_file_over_the_upload_limit_is_refused_naming_the_limit(admin, dataset, settings, dataset_store):
    settings.DATASET_UPLOAD_MAX_BYTES = 1 << 20
    content = jsonl([{"text": "x" * 1000}] * 2048)
    assert len(content) > 2 << 20 - 1
    refused = upload(api(admin), dataset.pk, content)
    assert refused.status_code == 413
    assert "DATASET_UPLOAD_MAX_BYTES allows at most 1048576 (1 MiB)" in refused.json()["size"][0]
    assert not DatasetUpload.objects.exists() and not DatasetVersion.objects.exists()


def test_sending_more_than_the_declared_size_is_refused(admin, dataset):
    client = api(admin)
    opened = client.post(
        "/api/v1/datasets/uploads/", {"dataset": dataset.pk, "filename": "a.jsonl", "size": 10}, format="json"
    ).json()
    sent = client.put(f"/api/v1/datasets/uploads/{opened['id']}/?offset=0", b"x" * 11, content_type="x/y")
    assert sent.status_code == 413 and "declared size of 10 bytes" in sent.json()["chunk"][0]
    assert client.get(f"/api/v1/datasets/uploads/{opened['id']}/").json()["received"] == 0
    assert storage.part_path(opened["id"]).stat().st_size == 0


def test_a_chunk_over_8_mib_is_refused(admin, dataset):
    client = api(admin)
    size = CHUNK_MAX_BYTES + 1
    opened = client.post(
        "/api/v1/datasets/uploads/", {"dataset": dataset.pk, "filename": "a.jsonl", "size": size}, format="json"
    ).json()
    sent = client.put(f"/api/v1/datasets/uploads/{opened['id']}/?offset=0", b"x" * size, content_type="x/y")
    assert sent.status_code == 413 and "at most 8388608 bytes" in sent.json()["chunk"][0]
    assert client.get(f"/api/v1/datasets/uploads/{opened['id']}/").json()["received"] == 0


def test_a_chunk_for_the_wrong_offset_is_a_conflict_that_says_where_to_resume(admin, dataset):
    client = api(admin)
    opened = client.post(
        "/api/v1/datasets/uploads/", {"dataset": dataset.pk, "filename": "a.jsonl", "size": 20}, format="json"
    ).json()
    url = f"/api/v1/datasets/uploads/{opened['id']}/"
    assert client.put(f"{url}?offset=0", b"0123456789", content_type="x/y").json()["received"] == 10
    again = client.put(f"{url}?offset=0", b"0123456789", content_type="x/y")  # a resend after a lost answer
    assert again.status_code == 409 and again.json()["received"] == 10
    missing = client.put(url, b"0123456789", content_type="x/y")
    assert missing.status_code == 400 and "offset" in missing.json()
    ranged = client.put(url, b"abcdefghij", content_type="x/y", HTTP_CONTENT_RANGE="bytes 10-19/20")
    assert ranged.status_code == 200 and ranged.json()["received"] == 20


class Breaking:
    """A request body whose connection drops after `after` bytes."""

    def __init__(self, data: bytes, after: int) -> None:
        self.data, self.after, self.sent = data, after, 0

    def read(self, size: int = -1) -> bytes:
        if self.sent >= self.after:
            raise OSError("connection reset by peer")
        piece = self.data[self.sent : self.sent + min(size, self.after - self.sent)]
        self.sent += len(piece)
        return piece


def test_a_broken_upload_resumes_from_its_offset_with_the_right_sha256(admin, dataset):
    from deployments.datasets import services

    content = jsonl([{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5000)])
    digest = hashlib.sha256(content).hexdigest()
    client = api(admin)
    opened = client.post(
        "/api/v1/datasets/uploads/",
        {"dataset": dataset.pk, "filename": "pc.jsonl", "size": len(content), "sha256": digest},
        format="json",
    ).json()
    url = f"/api/v1/datasets/uploads/{opened['id']}/"
    half = 60_000
    assert client.put(f"{url}?offset=0", content[:half], content_type="x/y").status_code == 200
    # The next chunk breaks after 30,000 of its 60,000 bytes: those bytes do not count.
    item = DatasetUpload.objects.get()
    with pytest.raises(OSError):
        services.upload_chunk(
            actor=admin, upload=item, offset=half, stream=Breaking(content[half:], 30_000), length=half
        )
    assert storage.part_path(item.pk).stat().st_size == half
    resumed_at = client.get(url).json()["received"]
    assert resumed_at == half
    for offset in range(resumed_at, len(content), half):
        assert (
            client.put(f"{url}?offset={offset}", content[offset : offset + half], content_type="x/y").status_code == 200
        )
    done = client.post(f"{url}complete/", {}, format="json")
    assert done.status_code == 201, done.content
    assert done.json()["sha256"] == digest and done.json()["row_count"] == 5000


def test_a_sha256_that_does_not_match_registers_nothing(admin, dataset):
    refused = upload(api(admin), dataset.pk, jsonl([{"text": "a"}]), sha256="0" * 64)
    assert refused.status_code == 400 and "changed on the way" in refused.json()["sha256"][0]
    assert not DatasetVersion.objects.exists()


def test_errors_never_hold_a_value_from_the_row(admin, dataset):
    secret = "SECRET-VALUE-123"
    rows = [
        {"messages": [{"role": secret, "content": secret}]},
        {"messages": secret},
        {"prompt": secret},
    ]
    refused = upload(api(admin), dataset.pk, jsonl(rows) + f'{{"text": "{secret}'.encode() + b"\n")
    assert refused.status_code == 400
    assert secret not in refused.content.decode()
    assert secret not in json.dumps(list(DatasetUpload.objects.values_list("errors", flat=True)))
