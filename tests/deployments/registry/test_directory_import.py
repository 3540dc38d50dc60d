"""Importing a directory, as a newcomer met it: the form did not say which roots were allowed until it failed, the
model store did not exist on a fresh install, and the same directory imported twice made two records, the second
counting the first one's manifest.json among the model's files."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from deployments.models import Host, Job, ModelArtifact
from deployments.registry.downloads import hash_directory
from deployments.registry.layout import ensure_store
from deployments.registry.services import model_import
from workers import runner

CONFIG = b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}'
FILES = {"config.json": CONFIG, "tokenizer.json": b"{}", "model.safetensors": b"\0" * 4096}


@pytest.fixture
def host(db, tmp_path, settings):
    settings.MODEL_STORE = tmp_path / "store"
    settings.MODEL_IMPORT_ROOTS = [str(tmp_path / "imports"), str(tmp_path / "shared")]
    return Host.objects.create(name="import-node", status="online")


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "imports" / "llama-local"
    directory.mkdir(parents=True)
    for name, data in FILES.items():
        (directory / name).write_bytes(data)
    return directory


def job_of(artifact) -> Job:
    return Job.objects.filter(target_type="deployments.modelartifact", target_id=str(artifact.pk)).latest("id")


def test_the_import_form_names_the_allowed_roots_before_any_attempt(client, engineer, host, tmp_path):
    client.force_login(engineer)
    page = client.get("/models/import/").content.decode()
    assert f"inside one of {tmp_path / 'imports'}, {tmp_path / 'shared'} (MODEL_IMPORT_ROOTS)" in page


def test_a_second_import_of_the_same_directory_is_refused_naming_the_first(api, client, engineer, host, model_dir):
    first = (
        api(engineer)
        .post("/api/v1/models/import/", {"host": host.name, "directory": str(model_dir)}, expected=202)
        .data
    )
    again = (
        api(engineer)
        .post("/api/v1/models/import/", {"host": host.name, "directory": str(model_dir) + "/"}, expected=400)
        .data
    )
    message = str(again["directory"][0])
    assert f"#{first['id']}" in message and f"/models/{first['id']}/" in message and "already imported" in message

    # The same real path through a link is the same directory.
    link = model_dir.parent / "alias"
    link.symlink_to(model_dir)
    api(engineer).post("/api/v1/models/import/", {"host": host.name, "directory": str(link)}, expected=400)

    client.force_login(engineer)
    page = client.post("/models/import/", {"host": host.pk, "directory": str(model_dir), "name": ""})
    assert page.status_code == 400
    assert f'href="/models/{first["id"]}/"' in page.content.decode()  # the existing record, offered
    assert ModelArtifact.objects.count() == 1 and Job.objects.count() == 1


def test_the_same_directory_on_another_host_is_another_copy(api, engineer, host, model_dir):
    other = Host.objects.create(name="import-node-2", status="online")
    api(engineer).post("/api/v1/models/import/", {"host": host.name, "directory": str(model_dir)}, expected=202)
    api(engineer).post("/api/v1/models/import/", {"host": other.name, "directory": str(model_dir)}, expected=202)
    assert ModelArtifact.objects.count() == 2


def test_a_failed_import_is_imported_again_in_place(engineer, host, tmp_path):
    directory = tmp_path / "imports" / "half"
    directory.mkdir(parents=True)
    (directory / "config.json").write_bytes(CONFIG)  # no tokenizer, no weights yet
    artifact = model_import(actor=engineer, host=host, directory=str(directory), repo_id="half")
    assert runner.run(job_of(artifact).pk) == "failed"
    for name, data in FILES.items():
        (directory / name).write_bytes(data)

    again = model_import(actor=engineer, host=host, directory=str(directory), repo_id="half")
    assert again.pk == artifact.pk and runner.run(job_of(again).pk) == "succeeded"
    assert ModelArtifact.objects.count() == 1


def test_the_manifest_the_console_wrote_is_not_counted_as_a_model_file(engineer, host, model_dir):
    artifact = model_import(actor=engineer, host=host, directory=str(model_dir), repo_id="llama-local")
    assert runner.run(job_of(artifact).pk) == "succeeded"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert sorted(entry["path"] for entry in manifest["files"]) == sorted(FILES)

    # Hashing it again (a re-import after deleting the record) sees the model's files only.
    assert sorted(hash_directory(model_dir)) == sorted(FILES)
    artifact.refresh_from_db()
    assert artifact.files_sha256 == {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}


def test_a_models_own_manifest_is_hashed_and_never_overwritten(engineer, host, model_dir):
    (model_dir / "manifest.json").write_text('{"format": "the model author\'s"}')
    assert "manifest.json" in hash_directory(model_dir)
    artifact = model_import(actor=engineer, host=host, directory=str(model_dir), repo_id="own-manifest")
    assert runner.run(job_of(artifact).pk) == "failed"
    assert job_of(artifact).failure_cause == "exists"
    assert json.loads((model_dir / "manifest.json").read_text()) == {"format": "the model author's"}


def test_the_model_store_is_created_at_start_up_readable_by_servers(tmp_path):
    store = tmp_path / "fresh" / "models"
    previous = os.umask(0o077)  # what `make run` runs under
    try:
        ensure_store(store)
    finally:
        os.umask(previous)
    assert store.is_dir()
    assert stat.S_IMODE(store.stat().st_mode) == 0o755
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o755
    os.chmod(store, 0o700)  # an admin's choice is kept
    ensure_store(store)
    assert stat.S_IMODE(store.stat().st_mode) == 0o700


def test_the_agent_and_make_run_create_the_store(db, tmp_path, settings, monkeypatch):
    from console.devserver import supervisor
    from workers import agent

    settings.MODEL_STORE = tmp_path / "agent-store"
    settings.AGENT_HOST_NAME = "store-node"
    idle = type("Idle", (), {"start": lambda self: None, "close": lambda self: None})
    monkeypatch.setattr(agent, "Heartbeat", lambda *a: idle())
    monkeypatch.setattr(agent, "connection", idle())  # the test's database connection stays open
    monkeypatch.setattr(agent, "report_once", lambda name: Host.objects.create(name=name, status="online"))
    agent.start_agent()
    assert settings.MODEL_STORE.is_dir()

    settings.MODEL_STORE = tmp_path / "run-store"
    started = []
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # no private redis for this check
    monkeypatch.setattr(supervisor.Supervisor, "commands", lambda self: started.append(True) or [])
    supervisor.Supervisor(host="127.0.0.1", port=0, say=lambda _: None).start()
    assert started and settings.MODEL_STORE.is_dir()
