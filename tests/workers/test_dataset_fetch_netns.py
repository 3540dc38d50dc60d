"""The agent fetches a job's dataset version from a real console (daphne) over a real network: the agent runs in its
own network namespace, joined to the console by a veth pair, and in its own mount namespace with a tmpfs over
DATASET_STORE, so the bytes can only have come over HTTP with the job's token."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group

from audit.models import AuditEvent
from deployments.datasets import services
from deployments.datasets.fetch import fetch_token
from deployments.models import DatasetVersion, Job
from tests.conftest import ROOT, _test_database_url
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db(transaction=True)  # daphne, another process, reads what the test wrote

BIN = Path(sys.executable).parent
# ~6 MB of rows: long enough to cut a throttled transfer in the middle.
CONTENT = b"".join(json.dumps({"text": f"row {n} " + "y" * 80}).encode() + b"\n" for n in range(64_000))
MiB = 2**20

# Runs inside the namespaces: plain fetch_file, no Django settings, the token from the environment (not argv).
AGENT = r"""
import json, os, sys
from pathlib import Path
from workers.datasets import DatasetFetchError, fetch_file
spec = json.loads(os.environ["FETCH_SPEC"])
store = Path(spec["store"])
print("store visible:", store.exists() and any(store.iterdir()), flush=True)
try:
    path = fetch_file(
        spec["url"], os.environ["FETCH_TOKEN"], sha256=spec["sha256"], size=spec["size"], dest=Path(spec["dest"]),
        timeout=(5, 20), retries=1, backoff=0.2, log=lambda text: print(text, flush=True),
    )
except DatasetFetchError as exc:
    print("FAILED:", exc, flush=True)
    sys.exit(1)
print("DONE", path, flush=True)
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode:
        pytest.fail(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _free_subnet() -> int:
    """The third octet of a 10.213.x.0/30 no interface on this machine uses (parallel runs pick their own)."""
    taken = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        octet = random.randrange(256)
        if f"10.213.{octet}." not in taken:
            return octet
    pytest.fail("no free 10.213.x.0/30 subnet for the agent's veth pair")


@dataclass
class Link:
    namespace: str
    console_if: str
    console_ip: str
    agent_ip: str

    def throttle(self, rate: str) -> None:
        """Slow what the console sends to the agent (so a transfer can be cut in the middle)."""
        subprocess.run(
            ["tc", "qdisc", "replace", "dev", self.console_if, "root", "tbf", "rate", rate, "burst", "32kb",
             "latency", "200ms"],
            check=True,
        )  # fmt: skip

    def unthrottle(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.console_if, "root"], check=True)


@pytest.fixture
def link():
    """A network namespace for the agent and a veth pair to it; gone after the test whatever happens."""
    tag = f"{os.getpid() % 10_000:04d}{secrets.token_hex(2)}"  # interface names are at most 15 characters
    namespace, console_if, agent_if = f"lld-fetch-{tag}", f"lfc{tag}", f"lfa{tag}"
    octet = _free_subnet()
    console_ip, agent_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
    try:
        # No skip: a machine that cannot do this cannot run the test, and that must be seen.
        _ip("netns", "add", namespace)
        _ip("link", "add", console_if, "type", "veth", "peer", "name", agent_if, "netns", namespace)
        _ip("addr", "add", f"{console_ip}/30", "dev", console_if)
        _ip("link", "set", console_if, "up")
        _ip("-n", namespace, "addr", "add", f"{agent_ip}/30", "dev", agent_if)
        _ip("-n", namespace, "link", "set", agent_if, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        yield Link(namespace, console_if, console_ip, agent_ip)
    finally:
        _ip("link", "del", console_if, check=False)  # takes its peer with it
        _ip("netns", "del", namespace, check=False)
    assert namespace not in _ip("netns", "list").stdout


@dataclass
class Console:
    url: str
    store: Path
    log: Path


@pytest.fixture
def console(link, settings, tmp_path, redis_url, transactional_db):
    """daphne serving the console on the console's end of the veth pair only, on the test database."""
    settings.DATASET_STORE = tmp_path / "store"
    with socket.socket() as probe:
        probe.bind((link.console_ip, 0))
        port = probe.getsockname()[1]
    env = dict(
        os.environ,
        DATABASE_URL=_test_database_url(),
        REDIS_URL=redis_url,
        DATA_DIR=str(django_settings.DATA_DIR),
        # Like a real console and agent: the same SECRETS_ENCRYPTION_KEYS (fetch tokens are signed with them), not
        # the same SECRET_KEY (agents never hold the console's).
        SECRETS_ENCRYPTION_KEYS=",".join(django_settings.SECRETS_ENCRYPTION_KEYS),
        SECRET_KEY=secrets.token_urlsafe(50),
        DATASET_STORE=str(settings.DATASET_STORE),
        ALLOWED_HOSTS=link.console_ip,
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "daphne.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(BIN / "daphne"), "-b", link.console_ip, "-p", str(port), "console.asgi:application"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_listening(server, link.console_ip, port, log)
        yield Console(f"http://{link.console_ip}:{port}", settings.DATASET_STORE, log)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_listening(server: subprocess.Popen, host: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"daphne exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"daphne did not listen on {host}:{port} within 60 s:\n{log.read_text()[-3000:]}")


@dataclass
class Fetch:
    version: DatasetVersion
    job: Job
    token: str
    dest: Path


@pytest.fixture
def fetch(console, admin, tmp_path):
    """A ~6 MB dataset version in the console's store and a running fine-tune job that trains on it."""
    team = Group.objects.create(name="fetch-team")
    dataset = services.dataset_create(actor=admin, name="fetch-set", team=team)
    upload = services.upload_start(actor=admin, dataset=dataset, filename="rows.jsonl", size=len(CONTENT))
    for offset in range(0, len(CONTENT), 4 * MiB):
        piece = CONTENT[offset : offset + 4 * MiB]
        upload = services.upload_chunk(
            actor=admin, upload=upload, offset=offset, stream=io.BytesIO(piece), length=len(piece)
        )
    version = services.upload_complete(actor=admin, upload=upload)
    job = JobFactory(
        kind=Job.Kind.FINETUNE, status=Job.Status.RUNNING, queue="host.gpu-a", params={"dataset_version_id": version.pk}
    )
    dest = tmp_path / "agent-cache" / f"{version.sha256}.jsonl"
    return Fetch(version, job, fetch_token(job, version), dest)


def run_agent(link: Link, console: Console, fetch: Fetch, *, token: str | None = None) -> subprocess.Popen:
    """The agent side in the agent's namespaces: its own network, and a tmpfs hiding the console's store."""
    spec = {
        "url": f"{console.url}/internal/datasets/versions/{fetch.version.pk}/file",
        "sha256": fetch.version.sha256,
        "size": fetch.version.size,
        "dest": str(fetch.dest),
        "store": str(console.store),
    }
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "FETCH_SPEC": json.dumps(spec),
        "FETCH_TOKEN": token or fetch.token,
    }
    hide_store = 'mount -t tmpfs tmpfs "$1" && shift && exec "$@"'
    command = ["ip", "netns", "exec", link.namespace, "unshare", "--mount", "sh", "-c", hide_store, "sh"]
    command += [str(console.store), sys.executable, "-c", AGENT]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(agent: subprocess.Popen, expect: int = 0) -> str:
    out, _ = agent.communicate(timeout=120)
    assert agent.returncode == expect, out
    return out


def fetched_offsets(fetch: Fetch) -> list[int]:
    events = AuditEvent.objects.filter(action="dataset.fetched", target_id=str(fetch.version.pk)).order_by("id")
    return [json.loads(event.detail)["offset"] for event in events]


def test_the_version_arrives_verified_and_a_damaged_cached_copy_is_fetched_again(link, console, fetch):
    out = finish(run_agent(link, console, fetch))
    assert "store visible: False" in out  # the agent could not have read the file from the store
    assert "fetched and verified" in out
    assert fetch.dest.read_bytes() == CONTENT
    assert not fetch.dest.with_name(fetch.dest.name + ".part").exists()
    assert fetched_offsets(fetch) == [0]

    out = finish(run_agent(link, console, fetch))
    assert "cached copy is verified" in out
    assert fetched_offsets(fetch) == [0]  # reused without a request

    damaged = bytearray(CONTENT)
    damaged[len(CONTENT) // 2] ^= 0x01  # one bit: same size, other digest
    fetch.dest.write_bytes(bytes(damaged))
    out = finish(run_agent(link, console, fetch))
    assert "does not match its sha256; fetching it again" in out and "fetched and verified" in out
    assert hashlib.sha256(fetch.dest.read_bytes()).hexdigest() == fetch.version.sha256
    assert fetched_offsets(fetch) == [0, 0]
    assert fetch.token not in console.log.read_text()


def test_a_transfer_cut_in_the_middle_resumes_with_range_and_ends_verified(link, console, fetch):
    part = fetch.dest.with_name(fetch.dest.name + ".part")
    link.throttle("16mbit")  # ~2 MB/s: the 6 MB file takes ~3 s
    agent = run_agent(link, console, fetch)
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size >= 2 * MiB):
        assert agent.poll() is None, f"the agent ended before it could be cut: {agent.communicate()[0]}"
        assert time.monotonic() < deadline, "the transfer did not reach 2 MiB within 60 s"
        time.sleep(0.02)
    os.killpg(agent.pid, signal.SIGKILL)
    agent.wait()
    kept = part.stat().st_size
    assert 2 * MiB <= kept < len(CONTENT) and not fetch.dest.exists()
    link.unthrottle()

    out = finish(run_agent(link, console, fetch))
    assert f"resuming at byte {kept} of {len(CONTENT)}" in out and "fetched and verified" in out
    assert fetch.dest.read_bytes() == CONTENT and not part.exists()
    assert fetched_offsets(fetch) == [0, kept]  # the second request asked only for the rest


def test_a_damaged_store_file_and_a_bad_token_fail_with_a_clear_message(link, console, fetch):
    out = finish(run_agent(link, console, fetch, token="forged-token"), expect=1)
    assert "The console refused the dataset (401): The fetch token is not valid." in out

    stored = console.store / fetch.version.path
    damaged = bytearray(stored.read_bytes())
    damaged[100] ^= 0x01
    stored.write_bytes(bytes(damaged))
    out = finish(run_agent(link, console, fetch), expect=1)
    assert f"not the expected {fetch.version.sha256}; the copy was deleted" in out
    assert not fetch.dest.exists() and not fetch.dest.with_name(fetch.dest.name + ".part").exists()

    fetch.job.status = Job.Status.SUCCEEDED
    fetch.job.save(update_fields=["status"])
    out = finish(run_agent(link, console, fetch), expect=1)
    assert "(403): Job" in out and "not pending or running" in out
