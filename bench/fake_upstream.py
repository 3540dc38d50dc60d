"""A model server with no model, for measuring the gateway alone: it speaks the OpenAI chat and completions
protocol (streaming SSE and not, usage when asked) and TGI's /health and /info, and streams `max_tokens` tokens
(default --tokens) one every --delay seconds. Its answers are prepared bytes, so it costs little CPU beside the
gateway on a small machine.

    python bench/fake_upstream.py --port 9100 --delay 0.02 --tokens 64 [--api-key KEY]

It prints "listening on <url>" once it accepts connections. FakeUpstream starts it as a subprocess."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

TOKEN = "tok"  # every token is this text: the gateway counts events, not meaning
MAX_TOKENS = 4096


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data:{data}\n\n".encode()


class Fake:
    def __init__(self, *, delay: float, tokens: int, api_key: str | None) -> None:
        self.delay, self.tokens, self.api_key = delay, tokens, api_key
        meta = {"id": "fake", "created": int(time.time()), "model": "fake"}
        chat_choice = {"index": 0, "delta": {"role": "assistant", "content": TOKEN}, "finish_reason": None}
        text_choice = {"index": 0, "text": TOKEN, "finish_reason": None}
        self.events = {
            True: _sse({"object": "chat.completion.chunk", **meta, "choices": [chat_choice], "usage": None}),
            False: _sse({"object": "text_completion", **meta, "choices": [text_choice], "usage": None}),
        }
        self.meta = meta

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/info", self.info)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"model_id": "fake", "max_total_tokens": MAX_TOKENS, "router": "fake", "served_by": "bench.fake_upstream"}
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    async def _answer(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        if self.api_key and request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "unauthorized"}}, status=401)
        body = await request.json()
        count = min(int(body.get("max_tokens") or self.tokens), MAX_TOKENS)
        usage = {"prompt_tokens": 8, "completion_tokens": count, "total_tokens": 8 + count}
        if not body.get("stream"):
            await asyncio.sleep(self.delay * count)
            text = TOKEN * count
            choice = {"index": 0, "finish_reason": "length"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            kind = "chat.completion" if chat else "text_completion"
            return web.json_response({"object": kind, **self.meta, "choices": [choice], "usage": usage})
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        event = self.events[chat]
        for _ in range(count):
            await asyncio.sleep(self.delay)
            await response.write(event)  # waits while the reader is behind: back-pressure, as a real server
        if (body.get("stream_options") or {}).get("include_usage"):
            kind = "chat.completion.chunk" if chat else "text_completion"
            await response.write(_sse({"object": kind, **self.meta, "choices": [], "usage": usage}))
        await response.write(_sse("[DONE]"))
        await response.write_eof()
        return response


async def serve(port: int, fake: Fake) -> None:
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


class FakeUpstream:
    """The fake server as a subprocess of the benchmark (so its CPU is not counted as the benchmark's)."""

    def __init__(self, port: int, *, delay: float, tokens: int, api_key: str | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, str(Path(__file__).resolve()), "--port", str(port)]
        command += ["--delay", str(delay), "--tokens", str(tokens)] + (["--api-key", api_key] if api_key else [])
        self.command = command
        self.process: subprocess.Popen | None = None

    def start(self) -> FakeUpstream:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.process.stdout.readline()
        if not line.startswith("listening"):
            self.stop()
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between two tokens of one stream")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer when the call names no max_tokens")
    parser.add_argument("--api-key", default=None, help="answer only calls with this bearer key (as serve.py)")
    args = parser.parse_args()
    fake = Fake(delay=args.delay, tokens=args.tokens, api_key=args.api_key)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, fake))
    else:
        uvloop.run(serve(args.port, fake))


if __name__ == "__main__":
    main()
