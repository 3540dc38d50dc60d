"""Model files a server container's non-root user can read (issue 20, defect 3): the console runs under umask 077,
and a first download of a repo made its `<store>/<org>--<name>` directory 0700, so the image's user 1000 could not
reach the weights through the store mounted at /data. The store writer now makes every directory it creates 0755
and every file 0644; the docker runtime mounts the model's and its adapters' directories, never the whole store.
Checked with a container of the ML test image running as its user 1000 and serving the downloaded model."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import docker
import pytest
from django.test import override_settings

from deployments.models import AllowedEndpoint, Host, Job, ModelArtifact, ModelSource
from deployments.registry.layout import ensure_store
from deployments.registry.services import model_add, model_import
from tests.support.ml_image import host_mounts, import_ml_image
from tests.support.serve_process import make_model, ml_python
from tests.workers.test_runtime_docker import _docker_client, run_spec, wait_healthy
from workers import runner
from workers.runtimes.base import RunSpec, RuntimeFailure
from workers.runtimes.docker import DockerRuntime, container_kwargs

IMAGE = "llmdeploy-test/store-modes:dev"
CONFIG = b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}'
FILES = {"config.json": CONFIG, "tokenizer.json": b"{}", "model.safetensors": b"\0" * 4096}


@contextlib.contextmanager
def consoles_umask():
    previous = os.umask(0o077)  # what `make run` runs every process under
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def job_of(artifact) -> Job:
    return Job.objects.filter(target_type="deployments.modelartifact", target_id=str(artifact.pk)).latest("id")


@pytest.fixture
def store(tmp_path, settings) -> Path:
    settings.MODEL_STORE = tmp_path / "store"
    return settings.MODEL_STORE


@pytest.fixture
def mirror(hub_server, admin):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    return ModelSource.objects.create(name="test mirror", kind="mirror", endpoint=hub_server.endpoint, created_by=admin)


@pytest.fixture
def host(db):
    return Host.objects.create(name="modes-node", status="online")


def download(hub_server, mirror, host, engineer, repo: str, files: dict[str, bytes]) -> ModelArtifact:
    """`repo` downloaded by a download job under the console's umask; the ready artifact."""
    hub_server.add_repo(repo, files)
    artifact = model_add(actor=engineer, source=mirror, repo_id=repo, host=host)
    with consoles_umask():
        assert runner.run(job_of(artifact).pk) == "succeeded", job_of(artifact).failure_detail
    artifact.refresh_from_db()
    return artifact


def assert_readable_below(store: Path, model: Path) -> None:
    for directory in [model, *model.parents[: len(model.relative_to(store).parts) - 1]]:  # the store's own: its admin's
        assert mode(directory) == 0o755, directory
    for path in model.rglob("*"):
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path


# -- without a daemon ----------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_first_download_under_the_consoles_umask_is_readable_from_the_store_down(
    hub_server, mirror, host, engineer, store
):
    artifact = download(hub_server, mirror, host, engineer, "acme/modes", FILES)
    model = Path(artifact.path)
    assert model.parent == store / "acme--modes"  # made by this download: it was 0700 under umask 077
    assert_readable_below(store, model)
    assert mode(store) == 0o755  # created by the download: it was 0700 as the staging directory's parent


@pytest.mark.django_db
def test_an_import_in_the_store_becomes_readable_and_one_outside_keeps_the_users_modes(
    engineer, host, store, tmp_path, settings
):
    outside = tmp_path / "imports" / "mine"
    inside = store / "copied" / "llama"
    settings.MODEL_IMPORT_ROOTS = [str(tmp_path / "imports"), str(store)]
    ensure_store(store)  # as at start-up
    with consoles_umask():  # copied by a user under a strict umask: 0700 directories, 0600 files
        for directory in (outside, inside):
            directory.mkdir(parents=True)
            for name, data in FILES.items():
                (directory / name).write_bytes(data)
    for directory, repo in ((inside, "local/inside"), (outside, "local/outside")):
        artifact = model_import(actor=engineer, host=host, directory=str(directory), repo_id=repo)
        with consoles_umask():
            assert runner.run(job_of(artifact).pk) == "succeeded", job_of(artifact).failure_detail
    assert_readable_below(store, inside)
    assert mode(outside) == 0o700 and mode(outside / "model.safetensors") == 0o600  # the user's, left alone
    assert mode(outside / "manifest.json") == 0o644  # the console's own file


def test_only_the_model_and_its_adapters_are_mounted_never_the_store(tmp_path):
    store = tmp_path / "store"
    spec = RunSpec(
        name="llmdeploy-1-chat",
        labels={},
        args=[],
        env={},
        model_dir=str(store / "acme--base" / "c0ffee"),
        model_store=str(store) + "/",
        adapter_dirs=[str(store / "adapters" / "support"), str(store / "adapters" / "support/"), "/elsewhere/x"],
    )
    _, host_config = container_kwargs(spec)
    assert {(m["Target"], m["Source"], m["ReadOnly"]) for m in host_config["mounts"]} == {
        ("/data/acme--base/c0ffee", str(store / "acme--base" / "c0ffee"), True),
        ("/data/adapters/support", str(store / "adapters" / "support"), True),
    }  # an adapter outside the store is not mounted (the server names it as missing)
    spec.model_dir = str(tmp_path / "elsewhere")
    with pytest.raises(RuntimeFailure) as outside:
        container_kwargs(spec)
    assert outside.value.cause == "config"


# -- a container as the image's non-root user ----------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    from tests.conftest import need

    found = _docker_client()
    need(found is not None, "a running dockerd (apt-get install -y docker.io, then start dockerd as root)")
    need(ml_python() is not None, "the ML environment (make ml-env) to run serve.py in the container")
    import_ml_image(found, IMAGE)
    yield found
    with contextlib.suppress(docker.errors.APIError):
        found.api.remove_image(IMAGE, force=True)


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)  # with the other docker tests (one xdist group, all transactional)
def test_a_downloaded_model_serves_from_a_container_as_the_images_user(
    client, hub_server, mirror, host, engineer, store, tmp_path
):
    tiny = make_model(tmp_path / "tiny")  # safetensors writes its files 0600
    files = {str(path.relative_to(tiny)): path.read_bytes() for path in tiny.rglob("*") if path.is_file()}
    artifact = download(hub_server, mirror, host, engineer, "acme/tiny", files)
    download(hub_server, mirror, host, engineer, "acme/other", FILES)  # in the store, not for this server
    model = Path(artifact.path)
    spec = run_spec("store-modes", store, image=IMAGE, model_dir=str(model))
    spec.args = [str(model).replace(str(store), "/data") if arg == "/data/tiny" else arg for arg in spec.args]
    assert str(model).replace(str(store), "/data") in spec.args  # --model-id names the model where it is mounted
    runtime = DockerRuntime(client)
    with override_settings(CONSOLE_TESTING=True, DOCKER_TEST_EXTRA_MOUNTS=host_mounts()):
        handle = runtime.start(spec)
    try:
        wait_healthy(runtime, handle)  # user 1000 read config, tokenizer and weights through /data
        container = client.containers.get(handle.ref)
        assert container.attrs["Config"]["User"] == "1000"
        code, output = container.exec_run(["ls", "-A", "/data"])
        assert code == 0 and output.decode().split() == ["acme--tiny"]  # not acme--other: the store is not mounted
        code, output = container.exec_run(["ls", "-A", "/data/acme--tiny"])
        assert output.decode().split() == [model.name]
    finally:
        runtime.remove(handle)
