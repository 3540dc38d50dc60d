"""vllm_serve.py's HTTP side: vLLM's OpenAI-compatible server (vllm/entrypoints/openai/api_server.py of the pinned
release) over the shared batching engine (serve_engine.py), as a Starlette app. Imports nothing from Django.

Routes: GET /health, /ping, /version, /metrics, /v1/models; POST /v1/chat/completions, /v1/completions, /tokenize,
/detokenize. Anything else is FastAPI's `{"detail": "Not Found"}` (vLLM has no TGI routes). As vLLM's
AuthenticationMiddleware, an API key guards the /v1 routes only (401 `{"error": "Unauthorized"}`). Errors are
vLLM's ErrorResponse, `{"error": {"message", "type", "param", "code"}}`; a request naming a model that is neither
a served name nor a LoRA adapter is a 404 NotFoundError. Stop strings are cut from the text, as vLLM does.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from workers.jobs.serve_api import flatten_messages
from workers.jobs.serve_engine import Engine, Params
from workers.jobs.serve_metrics import VllmMetrics
from workers.jobs.vllm_serve_args import LoraModule
from workers.jobs.vllm_serve_requests import (
    Job,
    Output,
    RequestError,
    Track,
    chat_logprobs,
    completion_logprobs,
    finish,
    missing,
    sampling,
    usage,
)

SSE_HEADERS = {"cache-control": "no-cache"}


@dataclass
class ServedModels:
    """What /v1/models lists and requests may name."""

    names: list[str]  # --served-model-name, the first one is what answers echo
    root: str  # the model path as given
    max_model_len: int
    loras: list[LoraModule] = field(default_factory=list)


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class VllmApp:
    def __init__(
        self,
        engine: Engine,
        tokenizer,
        metrics: VllmMetrics,
        models: ServedModels,
        *,
        version: str,
        api_keys: list[str],
        adapters: dict[str, str],
        max_logprobs: int = 20,
        defaults: dict | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.engine, self.tokenizer, self.metrics, self.models = engine, tokenizer, metrics, models
        self.version, self.max_logprobs, self.log = version, max_logprobs, log
        self.keys = [key.encode() for key in api_keys if key]
        self.adapters = adapters  # LoRA name -> the engine's adapter id
        self.defaults = defaults or {}  # sampling defaults from the model's generation config
        self.running: dict[int, str | None] = {}  # sequence id -> adapter, for vllm:lora_requests_info

    # -- plumbing ----------------------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/ping", self.health, methods=["GET", "POST"]),
            Route("/version", self.version_route, methods=["GET"]),
            Route("/metrics", self.render_metrics, methods=["GET"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]

    def app(self) -> Starlette:
        async def http_error(request: Request, exc: HTTPException) -> Response:
            # FastAPI's answer for unknown routes and methods.
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

        app = Starlette(routes=self.routes(), exception_handlers={HTTPException: http_error})
        return self._authenticated(app) if self.keys else app

    def _authenticated(self, app):
        keys = self.keys

        async def middleware(scope, receive, send):
            if scope["type"] == "http" and scope["method"] != "OPTIONS" and scope["path"].startswith("/v1"):
                header = dict(scope["headers"]).get(b"authorization", b"")
                given = header[7:] if header[:7].lower() == b"bearer " else b""
                if not any(hmac.compare_digest(given, key) for key in keys):
                    await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
                    return
            await app(scope, receive, send)

        return middleware

    @staticmethod
    async def _json(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise RequestError(
                f"[{{'type': 'json_invalid', 'loc': ('body', {exc.pos}), 'msg': 'JSON decode error', "
                f"'input': {{}}, 'ctx': {{'error': '{exc.msg}'}}}}]"
            ) from exc
        if not isinstance(body, dict):
            raise RequestError(
                "[{'type': 'model_attributes_type', 'loc': ('body',), "
                "'msg': 'Input should be a valid dictionary or object to extract fields from'}]"
            )
        return body

    async def _guard(self, call) -> Response:
        try:
            return await call()
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    def _model(self, body: dict) -> tuple[str, str | None]:
        """The name answers carry and the engine's adapter for a request's `model` (404 for an unknown one)."""
        name = body.get("model")
        if name in (None, "") or name in self.models.names:
            return self.models.names[0], None
        if name in self.adapters:
            return name, self.adapters[name]
        raise RequestError(f"The model `{name}` does not exist.", "NotFoundError", 404, "model")

    def _sampling(self, body: dict, prompt_tokens: int, *, chat: bool) -> tuple[Params, int, int]:
        return sampling(
            body,
            prompt_tokens,
            chat=chat,
            max_model_len=self.models.max_model_len,
            defaults=self.defaults,
            max_logprobs=self.max_logprobs,
        )

    def _jobs(self, prompts: list[list[int]], params: Params, n: int, max_tokens: int, adapter: str | None):
        jobs = []
        for p, input_ids in enumerate(prompts):
            track = Track(self.metrics, len(input_ids), max_tokens, n)
            for i in range(n):
                seed = None if params.seed is None else params.seed + i
                job_params = Params(**{**params.__dict__, "seed": seed, "adapter": adapter, "stop": list(params.stop)})
                jobs.append(Job(p * n + i, input_ids, job_params, track, Output(params.stop)))
        return jobs

    # -- running -----------------------------------------------------------------------------------------------
    async def _events(self, jobs: list[Job]) -> AsyncIterator[tuple[Job, dict, str]]:
        """Each token of every job as (job, event, new text); the last event of a job has type "end"."""
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for job in jobs:

            def emit(event: dict, job: Job = job) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (job, event))

            job.sequence = self.engine.submit(job.input_ids, job.params, emit)
            self.running[id(job.sequence)] = job.params.adapter
        remaining = len(jobs)
        try:
            while remaining:
                job, event = await queue.get()
                if event["type"] == "error":
                    raise RequestError(event["error"], "InternalServerError", 500)
                token = event["token"]
                job.track.token()
                if job.params.top_n_tokens:
                    job.logprobs.append((token, event["top_tokens"] or []))
                piece = "" if token["special"] else token["text"]
                if event["type"] != "end":
                    text = job.output.add(piece)
                else:
                    remaining -= 1
                    job.end = event
                    text = job.output.close(piece, event)
                    job.track.end(event, finish(event)[0])
                    self.running.pop(id(job.sequence), None)
                yield job, event, text
        finally:
            for job in jobs:
                if job.end is None:
                    job.track.abort()
                if job.sequence is not None:
                    job.sequence.cancel()
                    self.running.pop(id(job.sequence), None)

    async def _run(self, jobs: list[Job]) -> None:
        async for _ in self._events(jobs):
            pass

    # -- chat --------------------------------------------------------------------------------------------------
    def _chat_prompt(self, body: dict) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise missing("messages")
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(
                "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
                "template if the tokenizer does not define one."
            )
        try:
            text = self.tokenizer.apply_chat_template(
                flatten_messages(messages),
                tokenize=False,
                add_generation_prompt=body.get("add_generation_prompt", True),
            )
        except Exception as exc:
            raise RequestError(f"{type(exc).__name__}: {exc}") from exc
        return self.tokenizer(text, add_special_tokens=False).input_ids

    async def chat_completions(self, request: Request) -> Response:
        async def call() -> Response:
            body = await self._json(request)
            model, adapter = self._model(body)
            input_ids = self._chat_prompt(body)
            params, n, max_tokens = self._sampling(body, len(input_ids), chat=True)
            jobs = self._jobs([input_ids], params, n, max_tokens, adapter)
            meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
            want_logprobs = bool(body.get("logprobs"))
            if body.get("stream"):
                options = body.get("stream_options") or {}
                return StreamingResponse(
                    self._chat_stream(jobs, meta, bool(options.get("include_usage")), want_logprobs),
                    media_type="text/event-stream",
                    headers=SSE_HEADERS,
                )
            await self._run(jobs)
            choices = []
            for job in jobs:
                reason, stop_reason = finish(job.end)
                message = {  # vLLM leaves out empty tool_calls and absent annotations
                    "role": "assistant",
                    "content": job.output.text,
                    "refusal": None,
                    "audio": None,
                    "function_call": None,
                    "reasoning": None,
                }
                choices.append(
                    {
                        "index": job.index,
                        "message": message,
                        "logprobs": chat_logprobs(job.logprobs) if want_logprobs else None,
                        "finish_reason": reason,
                        "stop_reason": stop_reason,
                        "token_ids": None,
                    }
                )
            return JSONResponse(
                {
                    **meta,
                    "object": "chat.completion",
                    "choices": choices,
                    "service_tier": None,
                    "system_fingerprint": None,
                    "usage": usage(jobs),
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "prompt_text": None,
                    "kv_transfer_params": None,
                    "ec_transfer_params": None,
                    "metrics": None,
                }
            )

        return await self._guard(call)

    async def _chat_stream(
        self, jobs: list[Job], meta: dict, include_usage: bool, want_logprobs: bool
    ) -> AsyncIterator[bytes]:
        def chunk(choices: list[dict], **extra) -> bytes:
            return _sse({**meta, "object": "chat.completion.chunk", "choices": choices, **extra})

        for job in jobs:  # vLLM's first chunk: the role, for each choice
            delta = {"role": "assistant", "content": ""}
            yield chunk([{"index": job.index, "delta": delta, "logprobs": None, "finish_reason": None}])
        try:
            async for job, event, text in self._events(jobs):
                ended = event["type"] == "end"
                if not text and not ended:
                    continue
                choice = {
                    "index": job.index,
                    "delta": {"content": text},
                    "logprobs": chat_logprobs(job.logprobs[-1:]) if want_logprobs else None,
                    "finish_reason": finish(event)[0] if ended else None,
                }
                if ended:
                    choice["stop_reason"] = finish(event)[1]
                yield chunk([choice])
        except RequestError as exc:
            yield _sse(exc.body())
            yield _sse("[DONE]")
            return
        if include_usage:
            yield chunk([], usage=usage(jobs))
        yield _sse("[DONE]")

    # -- completions -------------------------------------------------------------------------------------------
    def _prompts(self, body: dict) -> list[list[int]]:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt = [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [prompt]  # one prompt as token ids
        if not isinstance(prompt, list) or not prompt:
            raise missing("prompt")
        prompts = []
        for item in prompt:
            if isinstance(item, str):
                prompts.append(self.tokenizer(item).input_ids)
            elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
                prompts.append(item)
            else:
                raise RequestError("Prompt must be a string, a list of strings or a list of token ids")
        return prompts

    async def completions(self, request: Request) -> Response:
        async def call() -> Response:
            body = await self._json(request)
            model, adapter = self._model(body)
            prompts = self._prompts(body)
            checked = [self._sampling(body, len(ids), chat=False) for ids in prompts]
            params, n, max_tokens = checked[0]
            if len(prompts) > 1 and body.get("max_tokens") is None:
                params.max_new_tokens = max_tokens = min(c[2] for c in checked)
            jobs = self._jobs(prompts, params, n, max_tokens, adapter)
            meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
            want_logprobs = body.get("logprobs") is not None
            if body.get("stream"):
                options = body.get("stream_options") or {}
                return StreamingResponse(
                    self._completion_stream(jobs, meta, bool(options.get("include_usage")), want_logprobs),
                    media_type="text/event-stream",
                    headers=SSE_HEADERS,
                )
            await self._run(jobs)
            choices = []
            for job in jobs:
                reason, stop_reason = finish(job.end)
                choices.append(
                    {
                        "index": job.index,
                        "text": job.output.text,
                        "logprobs": completion_logprobs(job.logprobs) if want_logprobs else None,
                        "finish_reason": reason,
                        "stop_reason": stop_reason,
                        "prompt_logprobs": None,
                    }
                )
            return JSONResponse(
                {
                    **meta,
                    "object": "text_completion",
                    "choices": choices,
                    "service_tier": None,
                    "system_fingerprint": None,
                    "usage": usage(jobs),
                    "kv_transfer_params": None,
                }
            )

        return await self._guard(call)

    async def _completion_stream(
        self, jobs: list[Job], meta: dict, include_usage: bool, want_logprobs: bool
    ) -> AsyncIterator[bytes]:
        try:
            async for job, event, text in self._events(jobs):
                ended = event["type"] == "end"
                if not text and not ended:
                    continue
                reason, stop_reason = finish(event) if ended else (None, None)
                logprobs = completion_logprobs(job.logprobs[-1:]) if want_logprobs else None
                choice = {
                    "index": job.index,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": reason,
                    "stop_reason": stop_reason,
                }
                yield _sse({**meta, "object": "text_completion", "choices": [choice]})
        except RequestError as exc:
            yield _sse(exc.body())
            yield _sse("[DONE]")
            return
        if include_usage:
            yield _sse({**meta, "object": "text_completion", "choices": [], "usage": usage(jobs)})
        yield _sse("[DONE]")

    # -- the rest ----------------------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        # vLLM answers 503 once its engine is dead; this engine dies only with its thread.
        return Response(status_code=200 if self.engine.thread.is_alive() else 503)

    async def version_route(self, request: Request) -> Response:
        # `served_by` is this server's addition: vLLM's answer is {"version": ...} alone.
        return JSONResponse({"version": self.version, "served_by": "workers.jobs.vllm_serve"})

    async def list_models(self, request: Request) -> Response:
        now = int(time.time())

        def card(model_id: str, root: str, parent: str | None, max_model_len: int | None) -> dict:
            permission = {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": now,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
            return {
                "id": model_id,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": root,
                "parent": parent,
                "max_model_len": max_model_len,
                "permission": [permission],
            }

        models = self.models
        data = [card(name, models.root, None, models.max_model_len) for name in models.names]
        data += [card(lora.name, lora.path, lora.base_model_name or models.names[0], None) for lora in models.loras]
        return JSONResponse({"object": "list", "data": data})

    async def render_metrics(self, request: Request) -> Response:
        engine, metrics = self.engine, self.metrics
        metrics.set("vllm:num_requests_running", engine.batch_size)
        metrics.set("vllm:num_requests_waiting", engine.queue_size)
        metrics.set("vllm:num_requests_waiting_by_reason", engine.queue_size, reason="capacity")
        metrics.set("vllm:kv_cache_usage_perc", min(engine.tokens_in_use() / engine.max_batch_total_tokens, 1.0))
        adapters = sorted({name for name in self.running.values() if name})
        metrics.lora_info(running=adapters, waiting=[])
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def tokenize(self, request: Request) -> Response:
        async def call() -> Response:
            body = await self._json(request)
            self._model(body)
            if "messages" in body:
                tokens = self._chat_prompt(body)
            elif isinstance(body.get("prompt"), str):
                tokens = self.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
                tokens = tokens.input_ids
            else:
                raise missing("prompt")
            strs = self.tokenizer.convert_ids_to_tokens(tokens) if body.get("return_token_strs") else None
            return JSONResponse(
                {"count": len(tokens), "max_model_len": self.models.max_model_len, "tokens": tokens, "token_strs": strs}
            )

        return await self._guard(call)

    async def detokenize(self, request: Request) -> Response:
        async def call() -> Response:
            body = await self._json(request)
            self._model(body)
            tokens = body.get("tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                raise missing("tokens")
            return JSONResponse({"prompt": self.tokenizer.decode(tokens)})

        return await self._guard(call)
