"""Dataset upload: a 1 GB file through the chunked upload API of the console as production serves it (daphne,
console.asgi:application) over the same bytes POSTed over loopback to a bare ASGI app that writes them to disk,
served by the same daphne, same run; and the console server's peak memory over its own start while it takes the
file (it must stay flat: chunks stream to the part file, none is held whole).

The client is the same for both (http.client, one keep-alive connection, the body read from the file 1 MiB at a
time): the console gets `POST uploads/` and one `PUT uploads/{id}/?offset=` per 8 MiB chunk with an API token,
the bare app one POST of the whole file: the figure is what uploading through the console costs over sending the
bytes. The note also gives the bare app's time for the same 8 MiB pieces as separate POSTs, which isolates what
the console adds per chunk (token, permission, row lock, Django spooling the body to a temporary file before
the view copies it to the part file); daphne buffers every body until it is complete, so neither is streamed
end to end. The upload is measured to its last chunk; completing it (hashing and
validating a gigabyte of JSONL) is another figure's work, so the upload is aborted after and its part removed.
The file lives in a temporary directory, deleted after.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Figure

FILE_BYTES = 10**9
CHUNK_BYTES = 8 * 2**20  # the API's largest chunk
SEND_BYTES = 2**20
RSS_GROWTH_GOAL_MIB = 64


async def bare_app(scope, receive, send) -> None:
    """The baseline: what any ASGI app must do to take a body, and nothing else (no auth, no database): each
    request's body is appended to one file."""
    with open(os.environ["BARE_UPLOAD_TARGET"], "ab") as out:
        more = True
        while more:
            message = await receive()
            out.write(message.get("body", b""))
            more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _write_file(path: Path) -> None:
    """JSONL chat records, as a dataset would be, written once (deterministic, a few seconds)."""
    record = json.dumps({"messages": [{"role": "user", "content": "q " * 200}, {"role": "assistant", "content": "a"}]})
    block = ((record + "\n") * (SEND_BYTES // (len(record) + 1) + 1)).encode()[:SEND_BYTES]
    with open(path, "wb") as out:
        for _ in range(FILE_BYTES // SEND_BYTES):
            out.write(block)
        out.write(block[: FILE_BYTES % SEND_BYTES])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Daphne:
    """A daphne server in its own process, as production starts it; ready when its port answers."""

    def __init__(self, application: str, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), application]
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"daphne {application} exited: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"daphne {application} did not listen within 60 s")

    def connection(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300, blocksize=SEND_BYTES)
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def rss_bytes(self) -> int:
        return _status_kib(self.process.pid, "VmRSS") * 1024

    def reset_peak(self) -> bool:
        """Make VmHWM start again from the current RSS (Linux: 5 into clear_refs); False where it cannot."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def peak_bytes(self) -> int:
        return _status_kib(self.process.pid, "VmHWM") * 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _request(connection, method: str, path: str, *, body=None, headers: dict[str, str]) -> dict:
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:500]!r}")
    return json.loads(data) if data else {}


def _console_upload(server: Daphne, source: Path, token: str, dataset_id: int) -> tuple[float, int]:
    """Seconds for start + every chunk, and the upload's id."""
    connection = server.connection()
    auth = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    body = json.dumps({"dataset": dataset_id, "filename": "bench.jsonl", "size": FILE_BYTES}).encode()
    upload = _request(
        connection, "POST", "/api/v1/datasets/uploads/", body=body, headers={**auth, "Content-Type": "application/json"}
    )
    with open(source, "rb") as handle:
        for offset in range(0, FILE_BYTES, CHUNK_BYTES):
            length = min(CHUNK_BYTES, FILE_BYTES - offset)
            answer = _request(
                connection,
                "PUT",
                f"/api/v1/datasets/uploads/{upload['id']}/?offset={offset}",
                body=_Slice(handle, length),
                headers={**auth, "Content-Type": "application/octet-stream", "Content-Length": str(length)},
            )
    seconds = time.perf_counter() - started
    if answer["received"] != FILE_BYTES:
        raise RuntimeError(f"the console received {answer['received']} of {FILE_BYTES} bytes")
    _request(connection, "DELETE", f"/api/v1/datasets/uploads/{upload['id']}/", headers=auth)
    connection.close()
    return seconds, upload["id"]


def _bare_upload(server: Daphne, source: Path, target: Path, request_bytes: int) -> float:
    """Seconds to POST the file to the bare app in requests of `request_bytes`."""
    target.unlink(missing_ok=True)
    connection = server.connection()
    started = time.perf_counter()
    with open(source, "rb") as handle:
        for offset in range(0, FILE_BYTES, request_bytes):
            length = min(request_bytes, FILE_BYTES - offset)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
            _request(connection, "POST", "/", body=_Slice(handle, length), headers=headers)
    seconds = time.perf_counter() - started
    connection.close()
    if target.stat().st_size != FILE_BYTES:
        raise RuntimeError("the bare app did not write the whole file")
    return seconds


class _Slice:
    """`length` bytes of an open file, read SEND_BYTES at a time (http.client sends a file-like body as read)."""

    def __init__(self, handle, length: int) -> None:
        self.handle, self.left = handle, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        piece = self.handle.read(size)
        self.left -= len(piece)
        return piece


def _console_account() -> tuple[str, int]:
    """An admin with an API token and a team's dataset, in the bench's database (daphne reads the same one)."""
    from django.contrib.auth.models import Group

    from console.accounts.services.tokens import token_create
    from deployments.datasets import services
    from tests.factories import UserFactory

    admin = UserFactory(username=f"bench-uploader-{os.getpid()}", roles=["admin"])
    _token, raw = token_create(actor=admin, user=admin, name="bench upload")
    team = Group.objects.create(name=f"bench-upload-team-{os.getpid()}")
    dataset = services.dataset_create(actor=admin, name=f"bench-upload-{os.getpid()}", team=team)
    return raw, dataset.pk


def run() -> list[Figure]:
    work = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    try:
        source = work / "bench.jsonl"
        _write_file(source)
        token, dataset_id = _console_account()
        env = {**os.environ, "DATASET_STORE": str(work / "store"), "BARE_UPLOAD_TARGET": str(work / "bare.bin")}
        env["PYTHONPATH"] = str(ROOT)
        console = Daphne("console.asgi:application", env, work / "console.log")
        try:
            _request(console.connection(), "GET", "/api/v1/datasets/", headers={"Authorization": f"Bearer {token}"})
            start_rss = console.rss_bytes()
            exact_peak = console.reset_peak()
            console_seconds, _upload = _console_upload(console, source, token, dataset_id)
            peak = console.peak_bytes()
        finally:
            console.stop()
        bare = Daphne("bench.bench_dataset_upload:bare_app", env, work / "bare.log")
        try:
            bare_seconds = _bare_upload(bare, source, work / "bare.bin", FILE_BYTES)
            chunked_seconds = _bare_upload(bare, source, work / "bare.bin", CHUNK_BYTES)
        finally:
            bare.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console_rate, bare_rate = FILE_BYTES / console_seconds, FILE_BYTES / bare_seconds
    growth_mib = (peak - start_rss) / 2**20
    return [
        Figure(
            "dataset_upload_over_bare_asgi_post",
            console_rate / bare_rate,
            "x",
            ">=",
            0.8,
            f"console {console_rate / 1e6:.0f} MB/s ({math.ceil(FILE_BYTES / CHUNK_BYTES)} chunks of 8 MiB, "
            f"{console_seconds:.1f} s) vs one POST to a bare ASGI app {bare_rate / 1e6:.0f} MB/s "
            f"({bare_seconds:.1f} s); the bare app took {chunked_seconds:.1f} s for the same 8 MiB pieces as POSTs "
            f"({chunked_seconds / console_seconds:.2f}x the console's time); 1 GB over loopback, daphne both, "
            "one run each",
        ),
        Figure(
            "dataset_upload_console_peak_rss_growth",
            growth_mib,
            "MiB",
            "<=",
            RSS_GROWTH_GOAL_MIB,
            f"daphne console.asgi's peak RSS {'during the upload' if exact_peak else 'since it started'} (VmHWM) "
            f"over its RSS after a first API request ({start_rss / 2**20:.0f} MiB), 1 GB in 8 MiB chunks",
        ),
    ]
