"""A timing tap: a TCP relay between a streaming client and the gateway that stamps, with its own clock, when each
request reached it and when each server-sent event with text passed through it, and writes one JSON line per
request. It is the independent timer of the very requests a benchmark job sends (the job's figures against the
tap's differ only by the relay's two loopback hops, not by the server's speed drifting between two runs).

    python -m tests.support.sse_tap --upstream http://127.0.0.1:8000 --out taps.jsonl

It prints its URL on its first line and relays until SIGTERM. HTTP/1.1 only, as the gateway answers callers:
requests with a Content-Length body, answers chunked (a stream) or with a Content-Length; keep-alive kept.
Its own process, so that no other work in the test's process delays its reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit


@dataclass
class Tapped:
    request_id: str
    start_ns: int  # the whole request had reached the tap
    arrivals_ns: list[int] = field(default_factory=list)  # one per event with text, as it passed
    end_ns: int = 0
    completion_tokens: int | None = None  # the server's count (usage), when it sends one
    status: int = 0

    def as_json(self) -> str:
        return json.dumps(self.__dict__)


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _has_text(event: dict) -> bool:
    """An OpenAI chat or completion chunk with text, or a TGI stream token."""
    for choice in event.get("choices") or ():
        if (choice.get("delta") or {}).get("content") or choice.get("text"):
            return True
    return bool((event.get("token") or {}).get("text"))


class Relay:
    def __init__(self, upstream: str, out: IO[str]) -> None:
        address = urlsplit(upstream)
        self.host, self.port = address.hostname, address.port or 80
        self.out = out

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
        for writer in (client_writer, upstream_writer):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await client_reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed its kept connection
                body = await client_reader.readexactly(int(_header(head, b"content-length") or 0))
                tapped = Tapped(
                    request_id=(_header(head, b"x-request-id") or b"").decode(), start_ns=time.perf_counter_ns()
                )
                upstream_writer.write(head + body)
                await self._answer(upstream_reader, client_writer, tapped)
                tapped.end_ns = time.perf_counter_ns()
                self.out.write(tapped.as_json() + "\n")
                self.out.flush()
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tapped: Tapped) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        tapped.status = int(head.split(b" ", 2)[1])
        if (_header(head, b"transfer-encoding") or b"").lower() != b"chunked":
            writer.write(await reader.readexactly(int(_header(head, b"content-length") or 0)))
            return
        pending = b""
        while True:
            size_line = await reader.readline()
            size = int(size_line.strip(), 16)
            data = await reader.readexactly(size + 2)
            now = time.perf_counter_ns()  # stamped before the relay's own parsing
            writer.write(size_line + data)
            if not size:
                return
            *lines, pending = (pending + data[:-2]).split(b"\n")
            for line in lines:
                payload = line[5:].strip()
                if not line.startswith(b"data:") or not payload.startswith(b"{"):
                    continue
                event = json.loads(payload)
                if _has_text(event):
                    tapped.arrivals_ns.append(now)
                usage = event.get("usage") or event.get("details") or {}
                tapped.completion_tokens = usage.get("completion_tokens", usage.get("generated_tokens"))


def read_taps(path: Path) -> list[Tapped]:
    if not path.exists():
        return []
    return [Tapped(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


class TapProcess:
    """The tap in its own process, relaying to `upstream`; `url` is where callers go instead."""

    def __init__(self, upstream: str, out: Path) -> None:
        self.upstream, self.out = upstream, out
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> TapProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.sse_tap", "--upstream", self.upstream, "--out", str(self.out)],
            cwd=Path(__file__).resolve().parents[2],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self.process.stdout.readline().strip()
        if not self.url:
            raise RuntimeError(f"the tap exited with {self.process.wait(10)} before it listened")
        return self

    def taps(self) -> list[Tapped]:
        return read_taps(self.out)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


async def _serve(upstream: str, out_path: str) -> None:
    with open(out_path, "a", encoding="utf-8") as out:
        relay = Relay(upstream, out)
        server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(f"http://127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.sse_tap")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.upstream, args.out))


if __name__ == "__main__":
    main()
