"""The docker runtime against a real dockerd: the production invocation (the TGI backend's arguments and
environment, the hardening, the token as a file) on a near-empty image built here with `docker import`
(nothing is pulled), whose entrypoint is our text-generation-launcher shim running serve.py on a tiny model.
The host's system libraries, its Python and the ML venv are bind-mounted read-only through the test-only
DOCKER_TEST_EXTRA_MOUNTS setting."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest
from django.test import override_settings
from text_generation import Client

from deployments.backends import get_backend
from deployments.backends.tgi import launch as tgi
from tests.conftest import need
from tests.support.ml_image import LAUNCHER, host_mounts, import_ml_image, tiny_model_store
from tests.support.serve_process import ml_python
from workers.runtimes import docker as docker_runtime
from workers.runtimes.base import LABEL_DEPLOYMENT, LABEL_MANAGED, RunSpec, RuntimeFailure
from workers.runtimes.docker import DockerRuntime, container_kwargs, secret_target, secrets_dir

TGI = get_backend("tgi")

pytestmark = pytest.mark.docker

IMAGE = "llmdeploy-test/serve:dev"
SUITE = {"llmdeploy.test-suite": "runtime-docker"}
LABELS = {LABEL_MANAGED: "true", LABEL_DEPLOYMENT: f"test-{os.getpid()}", **SUITE}
CANARY = "hf_canary_" + "7f3c9a1e5b2d4c6f8a0e"  # must appear nowhere in `docker inspect`
SERVE_LIMITS = {
    "max_concurrent_requests": 3,
    "max_input_tokens": 200,
    "max_total_tokens": 256,
    "max_batch_prefill_tokens": 256,
}


def _docker_client() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except docker.errors.DockerException:
        return None


def _remove_suite_containers(client: docker.DockerClient) -> None:
    label = [f"{key}={value}" for key, value in SUITE.items()]
    for summary in client.api.containers(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(summary["Id"], force=True)
        name = summary["Names"][0].lstrip("/") if summary.get("Names") else ""
        if name.startswith("llmdeploy-test-"):
            for path in sorted(secrets_dir(name).glob("*")):
                path.unlink()
            if secrets_dir(name).is_dir():
                secrets_dir(name).rmdir()


@pytest.fixture(scope="module")
def client():
    found = _docker_client()
    need(found is not None, "a running dockerd (apt-get install -y docker.io, then start dockerd as root)")
    _remove_suite_containers(found)
    yield found
    _remove_suite_containers(found)  # even after failures: nothing labelled by this suite outlives it


@pytest.fixture(scope="module")
def image(client) -> str:
    """The test image, made here: the ML image's layout (launcher entrypoint, non-root user 1000, ML_PYTHON)
    with the host's files mounted in at run time."""
    need(ml_python() is not None, "the ML environment (make ml-env) to run serve.py in the container")
    import_ml_image(client, IMAGE)
    yield IMAGE
    with contextlib.suppress(docker.errors.APIError):  # each run imports anew; keep no dangling copies
        client.api.remove_image(IMAGE)


@pytest.fixture(scope="module")
def testing_settings():
    with override_settings(CONSOLE_TESTING=True, DOCKER_TEST_EXTRA_MOUNTS=host_mounts()):
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tiny_model_store(tmp_path_factory)


def serve_spec() -> SimpleNamespace:
    """The fields of a DeploymentSpec that deployments.backends.tgi.launch reads."""
    return SimpleNamespace(
        quantize="",
        dtype="",
        kv_cache_dtype="",
        cuda_memory_fraction=1.0,
        lora_adapters=[],
        device="cpu",
        extra_env={"OMP_NUM_THREADS": "2", "NOT_ALLOWED": "x"},
        **SERVE_LIMITS,
    )


def plan(name: str, store: Path) -> tgi.LaunchPlan:
    return tgi.LaunchPlan(
        model_path=tgi.model_path_in_container(str(store / "tiny"), str(store)),
        port=tgi.CONTAINER_PORT,
        hostname="0.0.0.0",  # noqa: S104
        num_shard=1,
        instance=name,
        native=False,
    )  # inside the container, as production


def run_spec(suffix: str, store: Path, **overrides) -> RunSpec:
    name = f"llmdeploy-test-{os.getpid()}-{suffix}"
    spec = serve_spec()
    fields = {
        "name": name,
        "labels": dict(LABELS),
        "args": tgi.launcher_args(spec, plan(name, store)),
        "env": tgi.launch_env(spec, gpu_indexes=[], native=False),
        "model_dir": str(store / "tiny"),
        "model_store": str(store),
        "image": IMAGE,
        "secret_files": {tgi.TOKEN_FILE_ENV: CANARY},
        "stop_grace": 20,
    }
    return RunSpec(**{**fields, **overrides})


def wait_healthy(runtime: DockerRuntime, handle, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if TGI.health(handle.endpoint, timeout=2):
            return
        status = runtime.status(handle)
        if not status.alive:
            logs, _ = runtime.logs(handle, 0)
            pytest.fail(f"the container ended ({status}):\n" + "\n".join(logs[-40:]))
        time.sleep(0.3)
    logs, _ = runtime.logs(handle, 0)
    pytest.fail(f"not healthy after {timeout} s:\n" + "\n".join(logs[-40:]))


@pytest.fixture(scope="module")
def runtime() -> DockerRuntime:
    return DockerRuntime()


@pytest.fixture(scope="module")
def server(client, image, store, testing_settings, runtime):
    """One serve.py container shared by the tests below (test_stop_ends_it_within_the_grace comes last)."""
    spec = run_spec("serve", store)
    handle = runtime.start(spec)
    try:
        wait_healthy(runtime, handle)
        yield spec, handle
    finally:
        runtime.remove(handle)


# -- without a daemon ------------------------------------------------------------------------------------
def test_gpu_indexes_become_exactly_those_device_requests(tmp_path):
    api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")  # builds configs offline
    _, host = container_kwargs(run_spec("gpu", tmp_path, gpu_indexes=[0, 1], memory_limit="8g"))
    config = api.create_host_config(**host)
    assert config["DeviceRequests"] == [
        {"Driver": "", "Count": 0, "DeviceIDs": ["0", "1"], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert config["Memory"] == config["MemorySwap"] == 8 * 1024**3
    _, host = container_kwargs(run_spec("cpu", tmp_path, gpu_indexes=[]))
    assert "DeviceRequests" not in api.create_host_config(**host)


def test_test_mounts_are_refused_outside_the_test_suite(tmp_path):
    with (
        override_settings(CONSOLE_TESTING=False, DOCKER_TEST_EXTRA_MOUNTS=["/usr:/usr"]),
        pytest.raises(RuntimeFailure, match="DOCKER_TEST_EXTRA_MOUNTS") as failure,
    ):
        DockerRuntime(client=object()).start(run_spec("refused", tmp_path))  # refused before any docker call
    assert failure.value.cause == "config"


def test_an_unreachable_daemon_is_a_runtime_failure_not_a_missing_server(tmp_path):
    runtime = DockerRuntime(client=docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41"))
    handle = SimpleNamespace(ref="0" * 64, name="llmdeploy-test-gone")
    for call in (
        lambda: runtime.status(handle),
        lambda: runtime.logs(handle, 0),
        lambda: runtime.find(LABELS),
        lambda: runtime.stop(handle, 1),
        lambda: runtime.start(run_spec("down", tmp_path)),
    ):
        with pytest.raises(RuntimeFailure) as failure:
            call()
        assert failure.value.cause == "docker_unavailable"


# -- against dockerd -------------------------------------------------------------------------------------
def test_missing_image_is_a_clear_failure_and_nothing_is_pulled(client, runtime, tmp_path):
    with pytest.raises(RuntimeFailure, match="llmdeploy-test/absent:none is not present") as failure:
        runtime.start(run_spec("absent", tmp_path, image="llmdeploy-test/absent:none"))
    assert failure.value.cause == "image_missing"
    assert not client.api.images(name="llmdeploy-test/absent")


def test_invocation_is_the_production_one_and_hardened(server, client, store):
    spec, handle = server
    attrs = client.api.inspect_container(handle.ref)
    config, host = attrs["Config"], attrs["HostConfig"]
    assert config["Entrypoint"] == [LAUNCHER]
    assert config["Cmd"] == tgi.launcher_args(serve_spec(), plan(spec.name, store))
    assert "--model-id" in config["Cmd"] and "/data/tiny" in config["Cmd"]
    assert LABELS.items() <= config["Labels"].items()
    image_env = set(client.api.inspect_image(IMAGE)["Config"]["Env"])
    expected = {f"{key}={value}" for key, value in tgi.launch_env(serve_spec(), gpu_indexes=[], native=False).items()}
    expected.add(f"{tgi.TOKEN_FILE_ENV}={secret_target(tgi.TOKEN_FILE_ENV)}")
    # Nothing from the worker's environment: all the container has beyond the image's own variables is expected.
    assert set(config["Env"]) - (image_env - expected) == expected
    assert config["User"] == "1000"  # the image's own user, not forced by the runtime
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ShmSize"] == 1024**3 and host["PidsLimit"] == docker_runtime.PIDS_LIMIT
    assert host["NetworkMode"] == "bridge" and not host["DeviceRequests"]
    assert "/tmp" in host["Tmpfs"] and config["WorkingDir"] == "/tmp"
    assert not host.get("Binds") and config["StopTimeout"] == 20
    mounts = {mount["Destination"]: mount for mount in attrs["Mounts"]}
    # The model's own directory only, where the launcher's --model-id names it; never the whole store.
    assert mounts["/data/tiny"]["Source"] == str(store / "tiny") and mounts["/data/tiny"]["RW"] is False
    extra = {entry.split(":")[1] for entry in host_mounts()}
    assert set(mounts) == {"/data/tiny", secret_target(tgi.TOKEN_FILE_ENV)} | extra
    assert all(mount["RW"] is False for mount in mounts.values())
    assert attrs["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(handle.port)}]}
    assert handle.port > 0 and handle.endpoint == f"http://127.0.0.1:{handle.port}"


def test_token_is_a_read_only_file_and_absent_from_inspect(server, client):
    spec, handle = server
    assert CANARY not in json.dumps(client.api.inspect_container(handle.ref))
    container = client.containers.get(handle.ref)
    code, output = container.exec_run(["cat", secret_target(tgi.TOKEN_FILE_ENV)])  # as the image's user 1000
    assert code == 0 and output.decode() == CANARY
    code, _ = container.exec_run(["sh", "-c", f"echo x > {secret_target(tgi.TOKEN_FILE_ENV)}"])
    assert code != 0
    host_file = secrets_dir(spec.name) / tgi.TOKEN_FILE_ENV.lower()
    assert secrets_dir(spec.name).stat().st_mode & 0o777 == 0o700
    if os.geteuid() in (0, 1000):  # a root worker hands the file to the container's user 1000
        assert host_file.stat().st_uid == 1000 and host_file.stat().st_mode & 0o777 == 0o600
    else:  # no chown without root: readable inside the 0700 directory instead
        assert host_file.stat().st_mode & 0o777 == 0o644


def test_serves_health_and_generate_on_the_published_port(server):
    _, handle = server
    assert TGI.health(handle.endpoint)
    response = Client(handle.endpoint, timeout=60).generate("hello container", max_new_tokens=5)
    assert 1 <= response.details.generated_tokens <= 5
    assert TGI.info(handle.endpoint)["max_total_tokens"] == SERVE_LIMITS["max_total_tokens"]


def test_a_second_start_under_the_same_name_is_refused(server, runtime):
    spec, _ = server
    with pytest.raises(RuntimeFailure, match="already exists") as failure:
        runtime.start(spec)
    assert failure.value.cause == "name_conflict"
    assert (secrets_dir(spec.name) / tgi.TOKEN_FILE_ENV.lower()).read_text() == CANARY


def test_logs_stream_startup_lines_without_duplicates(server, runtime):
    _, handle = server
    lines, cursor = runtime.logs(handle, 0)
    assert any(tgi.READY_LINE in line for line in lines) and cursor == len(lines)
    assert not any(re.match(r"\S+T\S+\.\d{9}Z ", line) for line in lines)  # docker's own stamps are cut off
    again, same = runtime.logs(handle, cursor)
    assert (again, same) == ([], cursor)
    Client(handle.endpoint, timeout=60).generate("more output", max_new_tokens=2)
    time.sleep(0.5)
    more, after = runtime.logs(handle, cursor)
    docker_runtime._TAILS.clear()  # a restarted worker resumes from the stored cursor alone
    rest, final = DockerRuntime().logs(handle, after)
    whole, total = DockerRuntime().logs(handle, 0)
    assert lines + more + rest == whole[:final] and final == total


def test_find_returns_the_server_by_its_labels(server, runtime):
    _, handle = server
    found = runtime.find({LABEL_MANAGED: "true", LABEL_DEPLOYMENT: LABELS[LABEL_DEPLOYMENT]})
    assert [(h.ref, h.name, h.port, h.endpoint) for h in found] == [
        (handle.ref, handle.name, handle.port, handle.endpoint)
    ]
    assert runtime.find({LABEL_DEPLOYMENT: "no-such-deployment"}) == []


def test_stop_ends_it_within_the_grace(server, runtime):
    _, handle = server
    started = time.monotonic()
    status = runtime.stop(handle, grace=20)
    assert time.monotonic() - started < 20
    assert status.state == "exited" and status.exit_code == 0 and not status.oom_killed
    assert runtime.status(handle).state == "exited"
    assert [h.ref for h in runtime.find(LABELS)] == [handle.ref]  # stopped, not removed


def test_killed_behind_its_back_then_removed(client, image, store, testing_settings, runtime):
    spec = run_spec("killed", store)
    handle = runtime.start(spec)
    assert runtime.status(handle).alive
    client.api.kill(handle.ref)  # as an operator's `docker kill`
    deadline = time.monotonic() + 10
    while runtime.status(handle).alive and time.monotonic() < deadline:
        time.sleep(0.1)
    status = runtime.status(handle)
    assert status.state == "exited" and status.exit_code == 137
    runtime.remove(handle)
    assert runtime.status(handle).state == "missing"
    assert runtime.logs(handle, 3) == ([], 3)
    assert not secrets_dir(spec.name).exists() and runtime.find(LABELS | {LABEL_DEPLOYMENT: "x"}) == []
    runtime.remove(handle)  # idempotent


def test_logs_of_a_chatty_container_are_complete_and_in_order(client, image, runtime, testing_settings):
    """Thousands of stdout and stderr lines read while they are written: each exactly once, each stream in
    order, after the first read only the last few seconds are asked of docker."""
    script = (
        'i=0; while [ $i -lt 3000 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); '
        "if [ $((i % 150)) -eq 0 ]; then sleep 0.1; fi; done"
    )
    mounts = [docker_runtime._read_only(*entry.split(":")) for entry in host_mounts()]
    container = client.api.create_container(
        IMAGE,
        entrypoint=["/bin/sh", "-c", script],
        labels=SUITE,
        name=f"llmdeploy-test-{os.getpid()}-chatty",
        host_config=client.api.create_host_config(mounts=mounts),
    )
    handle = SimpleNamespace(ref=container["Id"], name="chatty")
    asked: list[int | None] = []
    read = runtime._lines
    runtime._lines = lambda ref, since: asked.append(since) or read(ref, since)
    try:
        client.api.start(container["Id"])
        lines, cursor, resumed, running = [], 0, False, True
        while running:
            running = client.api.inspect_container(container["Id"])["State"]["Running"]
            new, cursor = runtime.logs(handle, cursor)  # after the exit, this read takes the last lines
            lines += new
            if not resumed and len(lines) > 3000:
                docker_runtime._TAILS.clear()  # a worker restart halfway
                resumed = True
            time.sleep(0.02)
    finally:
        del runtime._lines
        client.api.remove_container(container["Id"], force=True)
    assert cursor == len(lines) == 6000, (cursor, len(lines), asked)
    for stream in ("out", "err"):
        got = [line for line in lines if line.startswith(stream)]
        assert got == [f"{stream} {i}" for i in range(3000)], (stream, len(got), asked)
    assert asked.count(None) <= 3 and sum(since is not None for since in asked) >= 3, asked


def test_a_named_image_user_is_looked_up_in_the_image(client, image, runtime):
    """The secret file goes to the uid the image's USER names (Dockerfile.ml uses a number, others a name)."""
    container = client.api.create_container(IMAGE, labels=SUITE, name=f"llmdeploy-test-{os.getpid()}-user")
    try:
        assert runtime._container_uid(container["Id"], "serve") == 1000  # from the image's /etc/passwd
        assert runtime._container_uid(container["Id"], "1000:1000") == 1000
        assert runtime._container_uid(container["Id"], "") == 0
        assert runtime._container_uid(container["Id"], "nobody-here") is None
    finally:
        client.api.remove_container(container["Id"], force=True)


def test_a_pinned_digest_runs_that_build_by_id_and_refuses_another(client, image, store, testing_settings, runtime):
    """The allow-list's digest is what runs (it used to run `repo:tag`, whatever build carried the tag)."""
    image_id = client.api.inspect_image(IMAGE)["Id"]
    other = "sha256:" + "0" * 64
    with pytest.raises(RuntimeFailure, match="not the allowed digest") as refused:
        runtime.start(run_spec("pin-wrong", store, image_digest=other))
    assert refused.value.cause == "image_digest_mismatch"
    assert not client.api.containers(all=True, filters={"name": f"llmdeploy-test-{os.getpid()}-pin-wrong"})
    handle = runtime.start(run_spec("pin-right", store, image_digest=image_id))
    try:
        assert client.api.inspect_container(handle.ref)["Config"]["Image"] == image_id  # by id, not by tag
    finally:
        runtime.remove(handle)
