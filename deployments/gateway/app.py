"""The inference gateway: a plain ASGI application (no Django views on the hot path) that applications call with
an inference key. OpenAI-compatible /v1 routes and TGI-native /llm/<deployment>/ routes, so the `openai` and the
`text-generation` clients work unchanged.

Each call: the key (cached, revocation checked on every call through cache generations), the source address, the
deployment and what the key may do with it, the quota (prompt tokens counted before the call), then the call is
forwarded to the least busy healthy server of the deployment. Streams pass through event by event with
back-pressure (ASGI's send waits on the socket); a client that goes away cancels the upstream request. A server
that fails before any byte was sent is left for another replica. Every call ends as one inference record.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from deployments.gateway import access, cache, quotas, records, spans, tokens
from deployments.gateway import dialects as d
from deployments.gateway import tgi_translate as tt
from deployments.gateway.routing import Balancer, Route, Upstream, route_for, split_model
from deployments.monitoring import instruments

logger = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
INLINE_TOKENIZE_CHARS = 8192
CHARGE_EVERY = 16  # completion tokens charged to the quota in steps, not one Redis call per token
LLM_PATH = re.compile(r"^/llm/(?P<name>[a-z0-9][a-z0-9-]{0,62})(?P<rest>/[a-z_]*)?$")
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-[0-9a-f]{2}$")

Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


class Refused(Exception):
    """A call the gateway answers itself, in the caller's dialect."""

    def __init__(self, problem: d.Problem, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.problem, self.message, self.retry_after = problem, message, retry_after


@dataclass
class Call:
    """What one call did, for its inference record."""

    route_name: str  # openai.chat, openai.completions, tgi.generate, tgi.generate_stream, tgi.info
    dialect: str
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=timezone.now)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    trace_id: str = field(default_factory=lambda: secrets.token_hex(16))
    parent_span_id: str | None = None  # the caller's span, from its traceparent header
    client_ip: str | None = None
    caller: access.Caller | None = None
    route: Route | None = None
    adapter: str = ""
    stream: bool = False
    status: int = 200
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None
    replica: str = ""
    prompt: object = None
    completion: list[str] = field(default_factory=list)

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.monotonic() - self.started

    def record(self) -> dict:
        keep = self.route is not None and self.route.keep_text
        return {
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "key_id": self.caller.key_id if self.caller else None,
            "key_prefix": self.caller.prefix if self.caller else "",
            "owner": self.caller.owner if self.caller else "",
            "team_id": self.caller.team_id if self.caller else None,
            "deployment_id": self.route.deployment_id if self.route else None,
            "deployment_name": self.route.name if self.route else "",
            "adapter": self.adapter,
            "route": self.route_name,
            "stream": self.stream,
            "started_at": self.started_at.astimezone(UTC).isoformat(),
            "status": self.status,
            "error": self.error[:300],
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": round(self.ttft * 1000, 3) if self.ttft is not None else None,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 3),
            "client_ip": self.client_ip,
            "replica": self.replica,
            "prompt": self.prompt if keep else None,
            "completion": "".join(self.completion) if keep else "",
        }


class SharedCache:
    """What the gateway read from the database, kept GATEWAY_CACHE_SECONDS (0: nothing is kept).

    Calls that miss the same entry at once share one lookup (a burst of 500 streams makes one query, not 500),
    and an expired entry is served while one refresh runs in the background. clear() (a cache generation moved:
    a key was revoked, a route changed) drops everything at once, and a lookup that started before the clear
    is not stored, so nothing older than the change is ever served."""

    def __init__(self) -> None:
        self._items: dict = {}
        self._loading: dict = {}
        self._epoch = 0

    async def get(self, key, load: Callable[[], Awaitable]):
        item = self._items.get(key)
        if item is not None:
            if item[0] < time.monotonic() and key not in self._loading:
                self._loading[key] = asyncio.ensure_future(self._load(key, load))
            return item[1]
        task = self._loading.get(key)
        if task is None:
            task = self._loading[key] = asyncio.ensure_future(self._load(key, load))
        return await asyncio.shield(task)

    async def _load(self, key, load: Callable[[], Awaitable]):
        epoch = self._epoch
        try:
            value = await load()
            ttl = settings.GATEWAY_CACHE_SECONDS
            if value is not None and ttl > 0 and epoch == self._epoch:
                if len(self._items) > 10_000:
                    self._items.clear()
                self._items[key] = (time.monotonic() + ttl, value)
            return value
        finally:
            if self._loading.get(key) is asyncio.current_task():
                self._loading.pop(key, None)

    def clear(self) -> None:
        self._epoch += 1
        self._items.clear()
        self._loading.clear()


async def _read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(d.TOO_LARGE, f"The request body is larger than {MAX_BODY} bytes.")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _json_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise Refused(d.BAD_REQUEST, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise Refused(d.BAD_REQUEST, "The request body must be a JSON object.")
    return body


async def _send_json(send: Send, status: int, body: dict, headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _header(scope: dict, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return ""


class Gateway:
    """The ASGI application. One per process; its caches and balancer are per process."""

    def __init__(self) -> None:
        self.redis: aioredis.Redis | None = None
        self.session: aiohttp.ClientSession | None = None
        self.balancer = Balancer()
        self.callers = SharedCache()
        self.routes = SharedCache()
        self.rights = SharedCache()
        self.generations: tuple = (None, None)
        self._stop = asyncio.Event()
        self._flusher: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def startup(self) -> None:
        # A bounded pool that waits for a free connection: redis-py's default pool fails outright past 100
        # connections, and 500 streams in flight each touch Redis (quota charges, the record).
        pool = aioredis.BlockingConnectionPool.from_url(settings.REDIS_URL, max_connections=64, timeout=10)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.GATEWAY_UPSTREAM_TIMEOUT, sock_connect=5),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            auto_decompress=False,
        )
        self._stop.clear()
        self._flusher = asyncio.create_task(records.flusher(self._stop))

    async def shutdown(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            try:
                await asyncio.wait_for(self._flusher, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                self._flusher.cancel()
        if self.session is not None:
            await self.session.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def _ensure_started(self) -> None:
        # Servers that skip the lifespan protocol (daphne) still get a working gateway.
        if self.session is None:
            await self.startup()

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        await self._ensure_started()
        await self.handle(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- dispatch --------------------------------------------------------------------------------------------
    async def handle(self, scope: dict, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        dialect = d.dialect_of(path)
        if path in ("/health", "/healthz") and method == "GET":
            await _send_json(send, 200, {"status": "ok"})
            return
        call = Call(route_name="", dialect=dialect)
        call.client_ip = (scope.get("client") or (None,))[0]
        match = TRACEPARENT.match(_header(scope, b"traceparent"))
        if match:
            call.trace_id, call.parent_span_id = match.group("trace"), match.group("span")
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = True
            await send(message)

        recorded = False
        try:
            handler, call.route_name, name = self._resolve(path, method)
            recorded = True  # every call to a route is recorded, refused ones too
            call.caller = await self._authenticate(scope, call)
            await handler(call, name, scope, receive, tracked)
        except Refused as refusal:
            await self._refuse(call, send, refusal)
        except ConnectionResetError:
            call.status, call.error = 499, "the client closed the connection"
        except Exception as exc:  # the caller still gets an answer in its dialect, and the call its record
            logger.exception("gateway: %s failed", path)
            if started:
                call.status, call.error = 502, f"the gateway failed mid-answer: {type(exc).__name__}"
            else:
                await self._refuse(call, send, Refused(d.GATEWAY_FAILED, "The gateway could not serve this call."))
        finally:
            if recorded:
                await self._record(call)

    async def _refuse(self, call: Call, send: Send, refusal: Refused) -> None:
        call.status, call.error = refusal.problem.status, refusal.message
        headers = [(b"x-request-id", call.request_id.encode())]
        if refusal.retry_after is not None:
            headers.append((b"retry-after", str(refusal.retry_after).encode()))
        body = d.error_body(call.dialect, refusal.problem, refusal.message)
        await _send_json(send, refusal.problem.status, body, headers)

    def _resolve(self, path: str, method: str):
        if path in ("/v1/models", "/v1/models/"):
            if method != "GET":
                raise Refused(d.METHOD, f"{method} is not allowed on {path}.")
            return self.models, "openai.models", ""
        if path in ("/v1/chat/completions", "/v1/completions"):
            if method != "POST":
                raise Refused(d.METHOD, f"{method} is not allowed on {path}.")
            kind = "openai.chat" if path.endswith("chat/completions") else "openai.completions"
            return self.openai, kind, ""
        match = LLM_PATH.match(path)
        if match:
            rest = (match.group("rest") or "/").rstrip("/") or "/"
            name = match.group("name")
            if rest == "/info" and method == "GET":
                return self.tgi_info, "tgi.info", name
            if rest in ("/", "/generate", "/generate_stream") and method == "POST":
                return self.tgi_generate, "tgi" + (rest.replace("/", ".") if rest != "/" else ".compat"), name
            if rest in ("/", "/info", "/generate", "/generate_stream"):
                raise Refused(d.METHOD, f"{method} is not allowed on {path}.")
        raise Refused(d.ROUTE_NOT_FOUND, f"There is no route {path} on this gateway.")

    # -- who, what, how much --------------------------------------------------------------------------------
    async def _check_generations(self) -> None:
        current = tuple(await self.redis.mget(cache.KEYS_GENERATION, cache.ROUTES_GENERATION))
        if current != self.generations:
            if current[0] != self.generations[0]:
                self.callers.clear()
                self.rights.clear()
            if current[1] != self.generations[1]:
                self.routes.clear()
                self.rights.clear()
            self.generations = current

    async def _authenticate(self, scope: dict, call: Call) -> access.Caller:
        header = _header(scope, b"authorization")
        scheme, _, raw = header.partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not raw:
            raise Refused(d.UNAUTHENTICATED, "Send an inference key: Authorization: Bearer <key>.")
        await self._check_generations()
        caller = await self.callers.get(raw, lambda: _in_thread(access.caller_for, raw))
        if caller is None or caller.expires_at <= timezone.now():
            raise Refused(d.UNAUTHENTICATED, "The inference key is unknown, revoked or expired.")
        if not caller.allows_source(call.client_ip):
            raise Refused(d.SOURCE_REFUSED, f"This key may not be used from {call.client_ip}.")
        return caller

    async def _route(self, call: Call, name: str, *, model_word: str = "deployment") -> Route:
        route = await self.routes.get(name, lambda: _in_thread(route_for, name))
        missing = f"The {model_word} {name!r} does not exist or you do not have access to it."
        if route is None:
            raise Refused(d.NOT_FOUND, missing)
        caller = call.caller
        right = await self.rights.get(
            (caller.key_id, route.deployment_id), lambda: _in_thread(access.access, caller, route.deployment_id)
        )
        if right == access.HIDDEN:
            raise Refused(d.NOT_FOUND, missing)
        call.route = route
        if right == access.DENIED:
            raise Refused(d.FORBIDDEN, f"This key may not use the {model_word} {name!r}.")
        if not route.running:
            raise Refused(d.NOT_RUNNING, f"{name!r} is not running ({route.state}); try again once it runs.")
        return route

    async def _admit(self, call: Call, route: Route, *, prompt=None, messages=None) -> None:
        size = len(prompt or "") + sum(len(str(m.get("content") or "")) for m in messages or [])
        if size <= INLINE_TOKENIZE_CHARS:  # microseconds with `tokenizers`: cheaper than a thread hop
            call.prompt_tokens = tokens.prompt_tokens(route.tokenizer_dir, prompt=prompt, messages=messages)
        else:
            call.prompt_tokens = await _in_thread(
                functools.partial(tokens.prompt_tokens, route.tokenizer_dir, prompt=prompt, messages=messages)
            )
        refusal = await quotas.admit(self.redis, call.caller.scope, call.prompt_tokens)
        if refusal is not None:
            raise Refused(d.QUOTA, refusal.message, retry_after=refusal.retry_after)

    # -- routes ----------------------------------------------------------------------------------------------
    async def models(self, call: Call, _name: str, scope: dict, receive: Receive, send: Send) -> None:
        listed = await _in_thread(access.usable_names, call.caller)
        created = int(time.time())
        data = []
        for name, adapters, team in listed:
            owner = team or "llmdeploy"
            data.append({"id": name, "object": "model", "created": created, "owned_by": owner})
            data += [
                {"id": f"{name}:{adapter}", "object": "model", "created": created, "owned_by": owner, "parent": name}
                for adapter in adapters
            ]
        await _send_json(send, 200, {"object": "list", "data": data})

    async def openai(self, call: Call, _name: str, scope: dict, receive: Receive, send: Send) -> None:
        body = _json_body(await _read_body(receive))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Refused(d.BAD_REQUEST, "model is required: a deployment's name, or name:adapter.")
        name, call.adapter = split_model(model)
        route = await self._route(call, name, model_word="model")
        if call.adapter and call.adapter not in route.adapters:
            raise Refused(
                d.NOT_FOUND, f"The model {model!r} does not exist: {name} serves no adapter {call.adapter!r}."
            )
        chat = call.route_name == "openai.chat"
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise Refused(d.BAD_REQUEST, "messages must be a non-empty list.")
            call.prompt = messages
            await self._admit(call, route, messages=[m for m in messages if isinstance(m, dict)])
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list):
                prompt = "".join(str(p) for p in prompt)
            if not isinstance(prompt, str):
                raise Refused(d.BAD_REQUEST, "prompt must be a string.")
            call.prompt = prompt
            await self._admit(call, route, prompt=prompt)
        call.stream = bool(body.get("stream"))
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        upstream_body = dict(body, model=route.upstream_model(call.adapter))
        if call.stream:
            upstream_body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        path = "/v1/chat/completions" if chat else "/v1/completions"
        await self._forward(call, route, path, upstream_body, receive, send, keep_usage=wants_usage)

    async def tgi_generate(self, call: Call, name: str, scope: dict, receive: Receive, send: Send) -> None:
        body = _json_body(await _read_body(receive))
        route = await self._route(call, name)
        inputs = body.get("inputs")
        if not isinstance(inputs, str):
            raise Refused(d.BAD_REQUEST, "inputs must be a string.")
        parameters = body.get("parameters") or {}
        call.adapter = str(parameters.get("adapter_id") or "") if isinstance(parameters, dict) else ""
        if call.adapter and call.adapter not in route.adapters:
            raise Refused(d.NOT_FOUND, f"{name} serves no adapter {call.adapter!r}.")
        call.prompt = inputs
        await self._admit(call, route, prompt=inputs)
        path = {"tgi.generate": "/generate", "tgi.generate_stream": "/generate_stream"}.get(call.route_name, "/")
        call.stream = path == "/generate_stream" or (path == "/" and bool(body.get("stream")))
        if route.native_generate:
            await self._forward(call, route, path, body, receive, send)
            return
        # A server without TGI's routes (vLLM): the same call through its OpenAI completions route, translated.
        try:
            upstream_body, request = tt.completion_request(
                body, model=route.upstream_model(call.adapter), stream=call.stream, compat=path == "/"
            )
        except tt.TranslationError as refusal:
            raise Refused(d.BAD_REQUEST, refusal.message) from None
        await self._forward(call, route, "/v1/completions", upstream_body, receive, send, translation=request)

    async def tgi_info(self, call: Call, name: str, scope: dict, receive: Receive, send: Send) -> None:
        route = await self._route(call, name)
        if not route.native_generate:  # the server has no /info: what the console knows of it, in TGI's shape
            await _send_json(send, 200, _info_of(route))
            return
        server = self.balancer.order(route.upstreams)[0]
        async with self.session.get(f"{server.url}/info", headers=_auth(server)) as response:
            info = await response.json(content_type=None)
        call.replica = server.label
        await _send_json(send, response.status, info)

    # -- forwarding ------------------------------------------------------------------------------------------
    async def _forward(
        self,
        call: Call,
        route: Route,
        path: str,
        body: dict,
        receive: Receive,
        send: Send,
        keep_usage: bool = False,
        translation: tt.GenerateRequest | None = None,
    ) -> None:
        """Send to the least busy server; on a failure before any byte reached the client, try the next one.
        With a `translation`, the server's completion answer is written back as TGI's generate answer."""
        pump = asyncio.current_task()
        sent = {"any": False}

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not sent.get("done"):  # after the last byte, servers report "disconnect" too: not a client leaving
                pump.cancel()

        watcher = asyncio.create_task(watch_disconnect())
        tried: set[str] = set()
        last_error = ""
        try:
            while True:
                candidates = self.balancer.order(route.upstreams, frozenset(tried))
                if not candidates:
                    raise Refused(d.UPSTREAM if tried else d.NOT_RUNNING, last_error or f"{route.name} has no server.")
                server = candidates[0]
                tried.add(server.url)
                call.replica = server.label
                self.balancer.acquire(server)
                try:
                    await self._exchange(call, server, path, body, send, sent, keep_usage, translation)
                    return
                except (aiohttp.ClientError, TimeoutError, UpstreamFailed) as exc:  # refused, reset, cut short
                    last_error = f"The server {server.label} failed: {exc or type(exc).__name__}"
                    logger.warning("gateway: %s (%s)", last_error, route.name)
                    if sent["any"]:
                        call.status, call.error = 502, last_error
                        sent["done"] = True
                        await send(
                            {
                                "type": "http.response.body",
                                "body": d.stream_error_event(call.dialect, d.UPSTREAM, last_error),
                                "more_body": False,
                            }
                        )
                        return
                finally:
                    self.balancer.release(server)
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled():
                call.status, call.error = 499, "the client closed the connection"
                asyncio.current_task().uncancel()
                return
            raise
        finally:
            sent["done"] = True
            watcher.cancel()

    async def _exchange(
        self,
        call: Call,
        server: Upstream,
        path: str,
        body: dict,
        send: Send,
        sent: dict,
        keep_usage: bool,
        translation: tt.GenerateRequest | None = None,
    ) -> None:
        headers = {**_auth(server), "content-type": "application/json", "x-request-id": call.request_id}
        traceparent = spans.upstream_traceparent(call.trace_id, call.parent_span_id, call.request_id)
        if traceparent:  # the server's own spans (when it traces) join the call's trace
            headers["traceparent"] = traceparent
        async with self.session.post(f"{server.url}{path}", json=body, headers=headers) as response:
            if response.status >= 500:  # the server is failing or not ready: another replica may answer
                text = (await response.read())[:300].decode("utf-8", errors="replace")
                raise UpstreamFailed(f"answered {response.status}: {text}")
            if response.status != 200:
                # The server's own refusal (validation, overload): passed on as it is, counted as an error.
                payload = await response.read()
                call.status, call.error = response.status, payload[:300].decode("utf-8", errors="replace")
                if translation is not None:
                    payload = json.dumps(tt.error_answer(response.status, payload)).encode()
                sent["any"] = sent["done"] = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status,
                        "headers": _pass_headers(response, call),
                    }
                )
                await send({"type": "http.response.body", "body": payload})
                return
            if not call.stream:
                await self._whole(call, response, send, sent, translation)
            else:
                await self._events(call, response, send, sent, keep_usage, translation)

    async def _whole(
        self,
        call: Call,
        response: aiohttp.ClientResponse,
        send: Send,
        sent: dict,
        translation: tt.GenerateRequest | None = None,
    ) -> None:
        payload = await response.read()
        call.first_token()
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if translation is not None and not isinstance(data, dict):
            raise UpstreamFailed("answered 200 without a completion")
        count_text = _completion_of(call, data)  # a completion's usage counts both sides of a translated call
        if translation is not None:
            payload = json.dumps(tt.generate_answer(data, translation)).encode()
        if count_text is not None:
            call.completion.append(count_text)
        if call.completion_tokens:
            await quotas.charge(self.redis, call.caller.scope, call.completion_tokens)
        sent["any"] = sent["done"] = True
        await send({"type": "http.response.start", "status": 200, "headers": _pass_headers(response, call)})
        await send({"type": "http.response.body", "body": payload})

    async def _events(
        self,
        call: Call,
        response: aiohttp.ClientResponse,
        send: Send,
        sent: dict,
        keep_usage: bool,
        translation: tt.GenerateRequest | None = None,
    ) -> None:
        """Pass the stream on as it comes: the whole events of each read from the server go out in one write (one
        event per write costs a system call per token), a partial event waits for its end. A translated stream
        is rewritten event by event first, then metered as the TGI stream it has become."""
        buffer = b""
        uncharged = 0
        openai = call.dialect == d.OPENAI
        keep_text = call.route is not None and call.route.keep_text
        chunks = response.content.iter_any()
        if translation is not None:
            chunks = tt.translated_stream(tt.GenerateStream(translation), chunks)
        async for chunk in chunks:
            buffer += chunk
            if b"\n\n" not in buffer:
                continue
            *events, buffer = buffer.split(b"\n\n")
            out = []
            for event in events:
                counted, drop, failure = _inspect(call, event, openai, keep_text)
                if counted:
                    call.first_token()
                    uncharged += counted
                if not drop or keep_usage:
                    out.append(event + b"\n\n")
                if failure:
                    call.status, call.error = 502, failure
            refusal = None
            if uncharged >= CHARGE_EVERY:
                refusal = await quotas.charge(self.redis, call.caller.scope, uncharged)
                uncharged = 0
            if not sent["any"]:
                sent["any"] = True
                await send({"type": "http.response.start", "status": 200, "headers": _pass_headers(response, call)})
            if refusal is not None:
                call.status, call.error = 429, refusal.message
                sent["done"] = True
                out.append(d.stream_error_event(call.dialect, d.QUOTA, refusal.message))
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": False})
                return
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
        if not sent["any"]:
            raise UpstreamFailed("closed the stream before any event")
        if uncharged:
            await quotas.charge(self.redis, call.caller.scope, uncharged)
        sent["done"] = True
        await send({"type": "http.response.body", "body": buffer, "more_body": False})

    async def _record(self, call: Call) -> None:
        record = call.record()
        instruments.gateway_call(record)
        try:
            await records.submit(self.redis, record)
        except Exception:  # a failed record must never fail the call; it is logged loudly
            logger.exception("gateway: could not queue the inference record %s", call.request_id)
        try:
            spans.record_span(record, parent_span_id=call.parent_span_id)
        except Exception:
            logger.exception("gateway: could not emit the model_inference span")


class UpstreamFailed(Exception):
    pass


def _info_of(route: Route) -> dict:
    """TGI's /info for a deployment whose server has none (vLLM), from what the console knows of it: limits it
    does not know are null, and `backend` says which server answers."""
    label, _, version = route.server.rpartition(" ")
    return {
        "model_id": route.model_id or route.name,
        "model_sha": route.model_sha,
        "model_pipeline_tag": None,
        "max_concurrent_requests": None,
        "max_best_of": 1,
        "max_stop_sequences": None,
        "max_input_tokens": route.max_model_len - 1 if route.max_model_len else None,
        "max_total_tokens": route.max_model_len,
        "validation_workers": None,
        "max_client_batch_size": None,
        "router": route.server or route.backend,
        "version": version if label and version[:1].isdigit() else None,
        "sha": None,
        "docker_label": None,
        "backend": route.backend,
        "served_model_name": route.upstream_model(),
        "adapters": list(route.adapters),
    }


def _in_thread(function, *args):
    # The ORM is synchronous: lookups run in the default thread pool, never on the event loop.
    return sync_to_async(_with_fresh_connection, thread_sensitive=False)(function, *args)


def _with_fresh_connection(function, *args):
    # What Django's request signals do around a request, which the gateway never sends: each pool thread keeps its
    # connection (bounded by the pool, reused), but without this a connection PostgreSQL dropped (a restart) was
    # never health-checked again nor replaced, and every lookup on that thread failed until the gateway restarted.
    close_old_connections()
    try:
        return function(*args)
    finally:
        close_old_connections()


def _auth(server: Upstream) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.key}"} if server.key else {}


def _pass_headers(response: aiohttp.ClientResponse, call: Call) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-request-id", call.request_id.encode())]
    for name in ("content-type", "cache-control", "x-accel-buffering"):
        value = response.headers.get(name)
        if value:
            headers.append((name.encode(), value.encode("latin-1")))
    return headers


def _completion_of(call: Call, data) -> str | None:
    """From a whole (non-stream) answer: completion tokens into `call`, the text returned for the log."""
    if not isinstance(data, dict | list):
        return None
    if isinstance(data, list):  # TGI's compat route answers [GenerateResponse]
        data = data[0] if data and isinstance(data[0], dict) else {}
    usage = data.get("usage") if isinstance(data, dict) else None
    if isinstance(usage, dict):
        call.prompt_tokens = usage.get("prompt_tokens") or call.prompt_tokens
        call.completion_tokens = usage.get("completion_tokens") or 0
        texts = []
        for choice in data.get("choices") or []:
            message = choice.get("message") or {}
            texts.append(message.get("content") or choice.get("text") or "")
        return "".join(texts)
    details = data.get("details") if isinstance(data, dict) else None
    if isinstance(details, dict):
        call.completion_tokens = details.get("generated_tokens") or 0
    text = data.get("generated_text") if isinstance(data, dict) else None
    if not call.completion_tokens and text:
        call.completion_tokens = tokens.completion_tokens(call.route.tokenizer_dir if call.route else None, text)
    return text


def _carries(payload: bytes, name: bytes) -> bool:
    # `"usage":{` not `"usage":null` (servers that send usage: null on every chunk stay on the fast path).
    return b'"' + name + b'":{' in payload or b'"' + name + b'": {' in payload


def _inspect(call: Call, event: bytes, openai: bool, keep_text: bool) -> tuple[int, bool, str]:
    """One SSE event: (tokens it carries, whether it is the usage chunk the caller did not ask for, an error).

    Both protocols put one JSON document on one `data:` line. Most events are one token and nothing else: unless
    the text is kept, only events that may carry usage, details or an error are parsed (a token whose text is
    "error" just takes the slow path); the server's usage figures correct the count at the end."""
    at = event.find(b"data:")
    if at < 0:
        return 0, False, ""
    payload = event[at + 5 :].strip()
    if not payload or payload == b"[DONE]":
        return 0, False, ""
    plain = b'"error"' not in payload and not _carries(payload, b"usage") and not _carries(payload, b"details")
    if plain and not keep_text:
        call.completion_tokens += 1
        return 1, False, ""
    try:
        data = json.loads(payload)
    except ValueError:
        return 0, False, ""
    if not isinstance(data, dict):
        return 0, False, ""
    if "error" in data:
        error = data["error"]
        return 0, False, str(error.get("message") if isinstance(error, dict) else error)
    if openai:
        usage = data.get("usage")
        counted = 0
        for choice in data.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
            if text:
                counted += 1
                if keep_text:
                    call.completion.append(text)
        if isinstance(usage, dict) and usage:
            call.prompt_tokens = usage.get("prompt_tokens") or call.prompt_tokens
            call.completion_tokens = usage.get("completion_tokens") or call.completion_tokens
        else:
            call.completion_tokens += counted
        return counted, not data.get("choices") and bool(usage), ""
    token = data.get("token") or {}
    details = data.get("details")
    if token:
        call.completion_tokens += 1
        if keep_text and not token.get("special"):
            call.completion.append(token.get("text") or "")
    if isinstance(details, dict) and details.get("generated_tokens"):
        call.completion_tokens = details["generated_tokens"]
    return (1 if token else 0), False, ""


application = Gateway()
