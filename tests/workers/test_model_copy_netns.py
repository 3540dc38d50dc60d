"""A model copied from host A to host B when neither host reaches anything but the console: each agent runs in its own
network namespace (a veth pair to the console, no default route: an outside address is unreachable) and its own mount
namespace (tmpfs over the other host's model store and over the console's relay), the console is a real daphne. The
sender is killed in the middle and resumes where the console's bytes end; the receiver waits for files, fetches them
and checks each sha256, so the bytes can only have gone A -> console -> B over HTTP with the copy jobs' tokens."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from audit.models import AuditEvent
from deployments.models import Job, ModelArtifact, ModelSource
from deployments.registry.copies import artifact_copy
from deployments.registry.copy_relay import copy_token, relay_dir
from tests.conftest import ROOT, _test_database_url
from tests.support.deploy_fixtures import process_host
from tests.workers.test_dataset_fetch_netns import BIN, Link, _free_subnet, _ip, _wait_listening

pytestmark = pytest.mark.django_db(transaction=True)  # daphne, another process, reads what the test wrote

MiB = 2**20
WEIGHTS = os.urandom(6 * MiB + 321)
FILES = {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}", "model.safetensors": WEIGHTS}

# Runs inside the namespaces: plain send_files / receive_files, no Django settings, the token from the environment.
AGENT = r"""
import json, os, socket, sys
from pathlib import Path
from workers.model_copy import CopyError, receive_files, send_files
spec = json.loads(os.environ["COPY_SPEC"])
try:
    socket.create_connection(("192.0.2.1", 443), timeout=3).close()
    print("outside: reachable", flush=True)
except OSError as exc:
    print("outside:", exc, flush=True)
print("hidden visible:", any(any(Path(p).iterdir()) for p in spec["hidden"]), flush=True)
say = lambda text: print(text, flush=True)
try:
    if spec["role"] == "send":
        done = send_files(spec["url"], spec["copy"], os.environ["COPY_TOKEN"], Path(spec["dir"]), spec["files"],
                          piece_bytes=256 * 1024, log=say)
    else:
        done = receive_files(spec["url"], spec["copy"], os.environ["COPY_TOKEN"], spec["files"], Path(spec["dir"]),
                             wait_s=90, poll_s=0.2, log=say)
except CopyError as exc:
    print("FAILED:", exc, flush=True)
    sys.exit(1)
print("DONE", done, flush=True)
"""


def _link(tag: str):
    namespace, console_if, agent_if = f"lld-copy-{tag}", f"lcc{tag}", f"lca{tag}"  # at most 15 characters
    octet = _free_subnet()
    console_ip, agent_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
    _ip("netns", "add", namespace)
    _ip("link", "add", console_if, "type", "veth", "peer", "name", agent_if, "netns", namespace)
    _ip("addr", "add", f"{console_ip}/30", "dev", console_if)
    _ip("link", "set", console_if, "up")
    _ip("-n", namespace, "addr", "add", f"{agent_ip}/30", "dev", agent_if)
    _ip("-n", namespace, "link", "set", agent_if, "up")
    _ip("-n", namespace, "link", "set", "lo", "up")
    return Link(namespace, console_if, console_ip, agent_ip)


@pytest.fixture
def links():
    """Host A's and host B's namespaces, each joined to the console by its own veth pair; gone after the test."""
    made = []
    try:
        for _ in range(2):
            made.append(_link(f"{os.getpid() % 1000:03d}{secrets.token_hex(2)}"))
        yield made
    finally:
        for link in made:
            _ip("link", "del", link.console_if, check=False)
            _ip("netns", "del", link.namespace, check=False)


@pytest.fixture
def console(links, settings, tmp_path, redis_url, transactional_db):
    """daphne on the console's end of both veth pairs only, on the test database, its relay in tmp_path."""
    settings.MODEL_COPY_RELAY = tmp_path / "relay"
    ports = []
    for link in links:
        with socket.socket() as probe:
            probe.bind((link.console_ip, 0))
            ports.append(probe.getsockname()[1])
    env = dict(
        os.environ,
        DATABASE_URL=_test_database_url(),
        REDIS_URL=redis_url,
        DATA_DIR=str(django_settings.DATA_DIR),
        SECRETS_ENCRYPTION_KEYS=",".join(django_settings.SECRETS_ENCRYPTION_KEYS),
        SECRET_KEY=secrets.token_urlsafe(50),  # agents never hold the console's
        MODEL_COPY_RELAY=str(settings.MODEL_COPY_RELAY),
        ALLOWED_HOSTS=",".join(link.console_ip for link in links),
        PYTHONUNBUFFERED="1",
    )
    endpoints = []
    for link, port in zip(links, ports, strict=True):
        endpoints += ["-e", f"tcp:port={port}:interface={link.console_ip}"]
    log = tmp_path / "daphne.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(BIN / "daphne"), *endpoints, "console.asgi:application"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        for link, port in zip(links, ports, strict=True):
            _wait_listening(server, link.console_ip, port, log)
        yield [f"http://{link.console_ip}:{port}" for link, port in zip(links, ports, strict=True)], log
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def agent(link: Link, url: str, job: Job, spec: dict, hidden: list[Path]) -> subprocess.Popen:
    """One host's agent side in its namespaces: its own network, tmpfs over what it must not see."""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "COPY_TOKEN": copy_token(job),
        "COPY_SPEC": json.dumps({**spec, "url": url, "hidden": [str(p) for p in hidden]}),
    }
    for path in hidden:
        path.mkdir(parents=True, exist_ok=True)
    hide = 'for p in $HIDE; do mount -t tmpfs tmpfs "$p" || exit 9; done; exec "$@"'
    env["HIDE"] = " ".join(str(p) for p in hidden)
    command = ["ip", "netns", "exec", link.namespace, "unshare", "--mount", "sh", "-c", hide, "sh"]
    command += [sys.executable, "-c", AGENT]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(process: subprocess.Popen, expect: int = 0) -> str:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == expect, out
    return out


def test_a_model_goes_from_host_a_to_host_b_through_the_console_only_and_resumes(admin, links, console, tmp_path):
    (link_a, link_b), ((url_a, url_b), log) = links, console
    a, b = process_host("host-a", gpus=1), process_host("host-b", gpus=1)
    store_a, store_b = tmp_path / "a-store", tmp_path / "b-store"
    directory = store_a / "imports" / "tiny"
    directory.mkdir(parents=True)
    for name, data in FILES.items():
        (directory / name).write_bytes(data)
    repo = ModelSource.objects.create(name="local", kind=ModelSource.Kind.LOCAL).repos.create(repo_id="tests/tiny")
    source = ModelArtifact.objects.create(
        repo=repo,
        host=a,
        path=str(directory),
        status=ModelArtifact.Status.READY,
        imported=True,
        files_sha256={name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()},
    )
    copy = artifact_copy(actor=admin, artifact=source, host=b)
    jobs = {job.params["role"]: job for job in Job.objects.filter(kind=Job.Kind.COPY, target_id=str(copy.pk))}
    relay = Path(django_settings.MODEL_COPY_RELAY)
    relay.mkdir(parents=True, exist_ok=True)
    staging = store_b / "staging"
    spec = {"copy": copy.pk, "files": source.files_sha256}

    receiver = agent(link_b, url_b, jobs["receive"], {**spec, "role": "receive", "dir": str(staging)}, [store_a, relay])
    # A's uploads at ~2 MB/s: the 6 MB of weights take ~3 s, long enough to cut the sender in the middle.
    sender_if = link_a.console_if.replace("lcc", "lca", 1)  # its end of the veth pair, inside its namespace
    subprocess.run(
        ["ip", "netns", "exec", link_a.namespace, "tc", "qdisc", "replace", "dev", sender_if, "root", "tbf",
         "rate", "16mbit", "burst", "32kb", "latency", "200ms"],
        check=True,
    )  # fmt: skip
    send_spec = {**spec, "role": "send", "dir": str(directory)}
    sender = agent(link_a, url_a, jobs["send"], send_spec, [store_b, relay])
    part = relay_dir(copy.pk) / "model.safetensors.part"
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size >= 2 * MiB):
        assert sender.poll() is None, f"the sender ended before it could be cut: {sender.communicate()[0]}"
        assert time.monotonic() < deadline, "the upload did not reach 2 MiB within 60 s"
        time.sleep(0.02)
    os.killpg(sender.pid, signal.SIGKILL)
    sender.wait()
    time.sleep(1)  # a piece the console had whole before the kill is written by now
    kept = part.stat().st_size
    assert 2 * MiB <= kept < len(WEIGHTS)
    assert receiver.poll() is None  # still waiting for the weights

    out_a = finish(agent(link_a, url_a, jobs["send"], send_spec, [store_b, relay]))
    assert f"the console holds {kept} of {len(WEIGHTS)} bytes; sending from there" in out_a
    out_b = finish(receiver)
    for out in (out_a, out_b):
        assert "outside: [Errno 101] Network is unreachable" in out  # no route out of either host
        assert "hidden visible: False" in out  # neither saw the other's store nor the console's relay
    assert "waiting for the sending host" in out_b and "DONE" in out_b
    assert {name: (staging / name).read_bytes() for name in FILES} == FILES
    assert not relay_dir(copy.pk).exists()  # the receiver told the console it holds every file
    fetched = AuditEvent.objects.filter(action="model.copy_fetched", target_id=str(copy.pk))
    assert fetched.count() == len(FILES)
    assert copy_token(jobs["send"]) not in log.read_text() and copy_token(jobs["receive"]) not in log.read_text()
