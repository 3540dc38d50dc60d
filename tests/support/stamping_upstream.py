"""A model server with no model that stamps every chunk it streams with its send time, so a load generator's
timing can be checked against an independent clock: OpenAI chat and completions (SSE, a role-only first chunk
for chat as vLLM sends, usage when asked, `data: [DONE]`) and TGI's `/generate_stream` (one token per event, the
last with `details`).

Each token-carrying chunk carries `"x_send_ns": time.perf_counter_ns()` taken just before it is written, and the
server keeps, per `X-Request-Id`, when the request arrived and when each token chunk was sent: GET /stamps
returns them (`?clear=1` forgets them). perf_counter is CLOCK_MONOTONIC on Linux, one clock for every process of
the machine, so the stamps compare directly with a client's perf_counter_ns.

    python tests/support/stamping_upstream.py --port 9200 --delay 0.02 --first-delay 0.05 [--chunk-tokens 1]
        [--fail-every N] [--cut-every N] [--split SECONDS] [--api-key KEY] [--keepalive SECONDS]
        [--tls-cert PEM --tls-key PEM]

It prints "listening on <url>" once it accepts connections; StampingUpstream starts it as a subprocess (its own
process, so the client's event loop and this one never share a GIL)."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from aiohttp import web

TOKEN = "tok"


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data:{data}\n\n".encode()


def _stamped(template: dict) -> tuple[bytes, bytes]:
    """The chunk as bytes around its stamp: the stamp goes in last, with no JSON encoding after it is taken."""
    body = json.dumps({**template, "x_send_ns": 0}, separators=(",", ":"))
    head, tail = body.rsplit('"x_send_ns":0', 1)
    return f'data:{head}"x_send_ns":'.encode(), f"{tail}\n\n".encode()


class Stamping:
    def __init__(
        self,
        *,
        delay: float,
        first_delay: float,
        chunk_tokens: int,
        fail_every: int,
        cut_every: int,
        api_key: str,
        split: float = 0.0,
    ):
        self.delay, self.first_delay, self.chunk_tokens, self.split = delay, first_delay, chunk_tokens, split
        self.fail_every, self.cut_every, self.api_key = fail_every, cut_every, api_key
        self.calls = 0
        self.stamps: dict[str, dict] = defaultdict(lambda: {"received_ns": 0, "sent_ns": [], "tokens": []})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/stamps", self.get_stamps)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/generate_stream", self.generate_stream)
        return app

    async def get_stamps(self, request: web.Request) -> web.Response:
        body = json.dumps(self.stamps)
        if request.query.get("clear"):
            self.stamps.clear()
        return web.Response(text=body, content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=False)

    async def _start(self, request: web.Request) -> tuple[dict, dict, web.Response | None]:
        body = await request.json()
        stamp = self.stamps[request.headers.get("x-request-id", f"anonymous-{self.calls}")]
        stamp["received_ns"] = time.perf_counter_ns()
        self.calls += 1
        stamp["call"] = self.calls
        stamp["peer_port"] = (request.transport.get_extra_info("peername") or ("", 0))[1]
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return body, stamp, web.json_response({"error": {"message": "unauthorized"}}, status=401)
        if self.fail_every and self.calls % self.fail_every == 0:
            return body, stamp, web.json_response({"error": {"message": "overloaded"}}, status=503)
        return body, stamp, None

    async def _tokens(self, response: web.StreamResponse, stamp: dict, count: int, make) -> bool:
        """Stream `count` tokens in chunks of chunk_tokens; False when this call is one to cut short."""
        cut = self.cut_every and stamp["call"] % self.cut_every == 0
        await asyncio.sleep(self.first_delay)
        sent, index = 0, 0
        while sent < count:
            if index:
                await asyncio.sleep(self.delay)
            tokens = min(self.chunk_tokens, count - sent)
            sent += tokens
            head, tail = make(tokens, sent, sent == count)
            if self.split:  # the event's first half, then the rest: it is complete (and sent) with the second
                await response.write(head)
                await asyncio.sleep(self.split)
                head = b""
            now = time.perf_counter_ns()
            await response.write(head + str(now).encode() + tail)
            stamp["sent_ns"].append(now)
            stamp["tokens"].append(tokens)
            index += 1
            if cut and sent >= count // 2:
                return False
        return True

    async def _openai(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body, stamp, refusal = await self._start(request)
        if refusal is not None:
            return refusal
        count = int(body.get("max_tokens") or 16)
        options = body.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats"))
        kind = "chat.completion.chunk" if chat else "text_completion"
        meta = {"id": "stamping", "object": kind, "created": int(time.time()), "model": body.get("model", "")}
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        if chat:
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            await response.write(_sse({**meta, "choices": [role]}))

        def make(tokens: int, sent: int, last: bool) -> tuple[bytes, bytes]:
            text = TOKEN * tokens
            choice = {"index": 0, "finish_reason": "length" if last else None}
            choice.update({"delta": {"content": text}} if chat else {"text": text})
            chunk = {**meta, "choices": [choice]}
            if continuous:
                chunk["usage"] = {"prompt_tokens": 8, "completion_tokens": sent, "total_tokens": 8 + sent}
            return _stamped(chunk)

        if not await self._tokens(response, stamp, count, make):
            return response  # cut short: no [DONE]
        if options.get("include_usage"):
            usage = {"prompt_tokens": 8, "completion_tokens": count, "total_tokens": 8 + count}
            await response.write(_sse({**meta, "choices": [], "usage": usage}))
        await response.write(_sse("[DONE]"))
        await response.write_eof()
        return response

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        body, stamp, refusal = await self._start(request)
        if refusal is not None:
            return refusal
        count = int((body.get("parameters") or {}).get("max_new_tokens") or 16)
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "x-compute-type": "stamping"})
        await response.prepare(request)

        def make(tokens: int, sent: int, last: bool) -> tuple[bytes, bytes]:
            event = {"index": sent, "token": {"id": 7, "text": TOKEN, "logprob": -0.1, "special": False}}
            event["generated_text"] = TOKEN * count if last else None
            event["details"] = {"finish_reason": "length", "generated_tokens": count, "seed": None} if last else None
            return _stamped(event)

        if await self._tokens(response, stamp, count, make):
            await response.write_eof()
        return response


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself (cryptography, in the control plane) and its key, as PEM."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def timing_errors(records: list[dict], stamps: dict[str, dict]) -> dict[str, list[int]]:
    """A load generator's raw records (bench_figures.StreamRecord.as_dict) against what this server stamped, in ns:
    `ttft` (its TTFT minus the stamped one: first arrival - first send), `itl` (each gap between two chunks minus
    the stamped gap), `lag` (each chunk's arrival - its send); `unmatched` lists the records whose chunks do not
    pair one to one with the stamps (a failed stream, a lost chunk)."""
    errors: dict[str, list] = {"ttft": [], "itl": [], "lag": [], "unmatched": []}
    for record in records:
        stamp = stamps.get(record["request_id"])
        arrivals = [chunk[0] for chunk in record["chunks"]]
        if record["error"] or not stamp or len(stamp["sent_ns"]) != len(arrivals) or not arrivals:
            errors["unmatched"].append(record["request_id"])
            continue
        sent = stamp["sent_ns"]
        errors["ttft"].append(arrivals[0] - sent[0])
        errors["lag"].extend(a - s for a, s in zip(arrivals, sent, strict=True))
        errors["itl"].extend((arrivals[i] - arrivals[i - 1]) - (sent[i] - sent[i - 1]) for i in range(1, len(sent)))
    return errors


async def serve(port: int, stamping: Stamping, *, keepalive: float, tls: ssl.SSLContext | None) -> None:
    runner = web.AppRunner(stamping.app(), access_log=None, keepalive_timeout=keepalive)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096, ssl_context=tls).start()
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


class StampingUpstream:
    """The stamping server as a subprocess; `stamps()` reads (and clears) what it sent."""

    def __init__(self, port: int, *, delay: float = 0.02, first_delay: float = 0.05, **options) -> None:
        self.tls_cert = options.get("tls_cert")
        scheme = "https" if self.tls_cert else "http"
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.command = [sys.executable, str(Path(__file__).resolve()), "--port", str(port)]
        self.command += ["--delay", str(delay), "--first-delay", str(first_delay)]
        for name, value in options.items():
            self.command += [f"--{name.replace('_', '-')}", str(value)]
        self.process: subprocess.Popen | None = None

    def start(self, cpu: int | None = None) -> StampingUpstream:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True, start_new_session=True)
        if cpu is not None:
            os.sched_setaffinity(self.process.pid, {cpu})
        line = self.process.stdout.readline()
        if not line.startswith("listening"):
            self.stop()
            raise RuntimeError(f"the stamping upstream did not start: {line!r}")
        return self

    def stamps(self, clear: bool = True) -> dict[str, dict]:
        address = self.url.split("://", 1)[1]
        if self.url.startswith("https"):
            trusting = ssl.create_default_context(cafile=self.tls_cert)  # the test's own certificate
            connection = http.client.HTTPSConnection(address, timeout=60, context=trusting)
        else:
            connection = http.client.HTTPConnection(address, timeout=60)
        try:
            connection.request("GET", "/stamps?clear=1" if clear else "/stamps")
            return json.load(connection.getresponse())
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def __enter__(self) -> StampingUpstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between two token chunks of a stream")
    parser.add_argument("--first-delay", type=float, default=0.05, help="seconds before the first token (prefill)")
    parser.add_argument("--chunk-tokens", type=int, default=1, help="tokens per chunk (vLLM may send several)")
    parser.add_argument("--fail-every", type=int, default=0, help="answer every Nth call 503")
    parser.add_argument("--cut-every", type=int, default=0, help="cut every Nth stream short (no last event)")
    parser.add_argument("--split", type=float, default=0.0, help="send each event in two writes this far apart")
    parser.add_argument("--api-key", default="", help="answer 401 to calls without this bearer key")
    parser.add_argument("--keepalive", type=float, default=75.0, help="seconds an idle connection is kept")
    parser.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM) ...")
    parser.add_argument("--tls-key", default=None, help="... and this key")
    args = parser.parse_args()
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    stamping = Stamping(
        delay=args.delay,
        first_delay=args.first_delay,
        chunk_tokens=args.chunk_tokens,
        fail_every=args.fail_every,
        cut_every=args.cut_every,
        api_key=args.api_key,
        split=args.split,
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, stamping, keepalive=args.keepalive, tls=tls))
    else:
        uvloop.run(serve(args.port, stamping, keepalive=args.keepalive, tls=tls))


if __name__ == "__main__":
    main()
