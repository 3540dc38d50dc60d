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

SSE_HEADERS = {"cache-control": "no-cache"}


@dataclass(frozen=True)
class LoraModule:
    """One --lora-modules entry: the name requests use, its directory and the served model it adapts."""

    name: str
    path: str
    base_model_name: str | None = None


@dataclass
class ServedModels:
    """What /v1/models lists and requests may name."""

    names: list[str]  # --served-model-name, the first one is what answers echo
    root: str  # the model path as given
    max_model_len: int
    loras: list[LoraModule] = field(default_factory=list)


class RequestError(Exception):
    """vLLM's ErrorResponse: a message, its type, the HTTP status and optionally the parameter at fault."""

    def __init__(self, message: str, error_type: str = "BadRequestError", status: int = 400, param: str | None = None):
        super().__init__(message)
        self.message, self.error_type, self.status, self.param = message, error_type, status, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.status}}


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def _missing(field_name: str) -> RequestError:
    # What pydantic says through vLLM's RequestValidationError handler (a 400, not FastAPI's 422).
    return RequestError(
        f"[{{'type': 'missing', 'loc': ('body', '{field_name}'), 'msg': 'Field required', 'input': None}}]"
    )


def _finish(end: dict) -> tuple[str, str | None]:
    """vLLM's finish_reason and stop_reason: EOS is "stop" with no stop_reason, a stop string "stop" with it."""
    if end["finish_reason"] == "length":
        return "length", None
    if end["finish_reason"] == "stop_sequence":
        return "stop", end.get("stop_string")
    return "stop", None


class _Output:
    """One sequence's text as vLLM streams it: stop strings cut off, text that could begin one held back."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.hold = max((len(stop) for stop in self.stops), default=1) - 1
        self.text, self.sent = "", 0

    def add(self, piece: str) -> str:
        self.text += piece
        ready = max(len(self.text) - self.hold, self.sent)
        out, self.sent = self.text[self.sent : ready], ready
        return out

    def close(self, piece: str, end: dict) -> str:
        """The last piece and the rest of the text, cut at the stop string that ended it (recorded in `end`)."""
        self.text += piece
        if end["finish_reason"] == "stop_sequence":
            found = [(self.text.find(stop), stop) for stop in self.stops if stop in self.text]
            if found:
                cut, stop = min(found)
                end["stop_string"] = stop
                self.text = self.text[:cut]
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out


class _Track:
    """One request's metrics, recorded as vLLM records them (per token, then once at the end)."""

    def __init__(self, metrics: VllmMetrics, prompt_tokens: int, max_tokens: int, n: int) -> None:
        self.metrics, self.prompt_tokens, self.max_tokens, self.n = metrics, prompt_tokens, max_tokens, n
        self.arrival = self.last = time.monotonic()
        self.first: float | None = None
        metrics.observe("vllm:request_params_n", n)
        metrics.observe("vllm:request_params_max_tokens", max_tokens)
        metrics.observe("vllm:request_max_num_generation_tokens", max_tokens)

    def token(self) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
            self.metrics.inc("vllm:prompt_tokens", self.prompt_tokens)
            self.metrics.observe("vllm:time_to_first_token_seconds", now - self.arrival)
        else:
            self.metrics.observe("vllm:inter_token_latency_seconds", now - self.last)
        self.last = now
        self.metrics.inc("vllm:generation_tokens")

    def end(self, end: dict, reason: str) -> None:
        now = time.monotonic()
        first = self.first or now
        queued = max(end["queue_seconds"], 0.0)
        metrics = self.metrics
        metrics.inc("vllm:request_success", finished_reason=reason)
        metrics.observe("vllm:e2e_request_latency_seconds", now - self.arrival)
        metrics.observe("vllm:request_queue_time_seconds", queued)
        metrics.observe("vllm:request_inference_time_seconds", end["inference_seconds"])
        metrics.observe("vllm:request_prefill_time_seconds", max(first - self.arrival - queued, 0.0))
        metrics.observe("vllm:request_decode_time_seconds", now - first)
        metrics.observe("vllm:request_prompt_tokens", self.prompt_tokens)
        metrics.observe("vllm:request_generation_tokens", end["generated_tokens"])
        metrics.observe("vllm:request_num_preemptions", 0)
        metrics.observe("vllm:request_prefill_kv_computed_tokens", self.prompt_tokens)
        if end["generated_tokens"] > 1:
            metrics.observe("vllm:request_time_per_output_token_seconds", (now - first) / (end["generated_tokens"] - 1))

    def abort(self) -> None:
        self.metrics.inc("vllm:request_success", finished_reason="abort")


@dataclass
class _Job:
    """One sequence of a request: its prompt, sampling, where its choice goes and what it has produced."""

    index: int
    input_ids: list[int]
    params: Params
    track: _Track
    output: _Output
    sequence: object | None = None
    end: dict | None = None
    logprobs: list = field(default_factory=list)


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

    # -- sampling ----------------------------------------------------------------------------------------------
    def _sampling(self, body: dict, prompt_tokens: int, *, chat: bool) -> tuple[Params, int, int]:
        """Engine parameters, n and max_tokens from a request, checked as vLLM's SamplingParams checks them."""

        def number(name: str, default=None):
            value = body.get(name, self.defaults.get(name, default))
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise RequestError(
                    f"[{{'type': 'float_type', 'loc': ('body', '{name}'), 'msg': 'Input should be a valid number'}}]"
                )
            return value

        temperature = number("temperature", 1.0)
        top_p, top_k = number("top_p", 1.0), number("top_k", 0)
        frequency, presence = number("frequency_penalty", 0.0), number("presence_penalty", 0.0)
        repetition, seed = number("repetition_penalty", 1.0), number("seed")
        n = number("n", 1)
        if temperature < 0:
            raise RequestError(f"temperature must be non-negative, got {temperature}.", param="temperature")
        if temperature > 2:
            raise RequestError(f"temperature must be in [0, 2], got {temperature}.", param="temperature")
        if not 0 < top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {top_p}.", param="top_p")
        if top_k < -1:
            raise RequestError(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
        for name, value in (("frequency_penalty", frequency), ("presence_penalty", presence)):
            if not -2 <= value <= 2:
                raise RequestError(f"{name} must be in [-2, 2], got {value}.")
        if repetition <= 0:
            raise RequestError(f"repetition_penalty must be greater than zero, got {repetition}.")
        if not isinstance(n, int) or n < 1:
            raise RequestError(f"n must be at least 1, got {n}.")
        # vLLM 0.34 (renderers/params.py, get_max_tokens): a prompt longer than the model is refused, max_tokens
        # above max_model_len too; otherwise max_tokens is clamped to what the context leaves.
        name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        limit = self.models.max_model_len
        max_tokens = number(name, self.defaults.get("max_tokens"))
        if max_tokens is not None and max_tokens > limit:
            raise RequestError(
                f"{name}={max_tokens} cannot be greater than max_model_len={limit}. Please request fewer output "
                "tokens.",
                param=name,
            )
        if prompt_tokens > limit:
            raise RequestError(
                f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                f"{prompt_tokens} input tokens, which exceeds this limit even without any output tokens. Please "
                "reduce the length of the input prompt.",
                param="input_tokens",
            )
        max_tokens = min(limit - prompt_tokens, limit if max_tokens is None else max_tokens)
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]
        top_logprobs = self._logprobs_wanted(body, chat=chat)
        greedy = temperature < 1e-5  # vLLM's _SAMPLING_EPS: greedy, whatever top_p and top_k say
        params = Params(
            max_new_tokens=int(max_tokens),
            do_sample=not greedy,
            temperature=None if greedy or temperature == 1.0 else float(temperature),
            top_k=None if greedy or top_k in (0, -1) else int(top_k),
            top_p=None if greedy or top_p == 1 else float(top_p),
            repetition_penalty=None if repetition == 1 else float(repetition),
            frequency_penalty=frequency or None,
            presence_penalty=presence or None,
            stop=stop,
            seed=seed,
            top_n_tokens=top_logprobs,
        )
        return params, n, int(max_tokens)

    def _logprobs_wanted(self, body: dict, *, chat: bool) -> int:
        """How many top tokens each position needs (0: none, or only the chosen one's)."""
        if chat:
            if not body.get("logprobs"):
                return 0
            wanted = body.get("top_logprobs") or 0
        else:
            wanted = body.get("logprobs")
            if wanted is None:
                return 0
        if not isinstance(wanted, int) or wanted < 0:
            raise RequestError(f"logprobs must be non-negative, got {wanted}.")
        if wanted > self.max_logprobs:
            raise RequestError(
                f"Requested sample logprobs of {wanted}, which is greater than max allowed: {self.max_logprobs}"
            )
        return max(wanted, 1)  # the engine reports the chosen token's logprob alongside its top tokens

    def _jobs(self, prompts: list[list[int]], params: Params, n: int, max_tokens: int, adapter: str | None):
        jobs = []
        for p, input_ids in enumerate(prompts):
            track = _Track(self.metrics, len(input_ids), max_tokens, n)
            for i in range(n):
                seed = None if params.seed is None else params.seed + i
                job_params = Params(**{**params.__dict__, "seed": seed, "adapter": adapter, "stop": list(params.stop)})
                jobs.append(_Job(p * n + i, input_ids, job_params, track, _Output(params.stop)))
        return jobs

    # -- running -----------------------------------------------------------------------------------------------
    async def _events(self, jobs: list[_Job]) -> AsyncIterator[tuple[_Job, dict, str]]:
        """Each token of every job as (job, event, new text); the last event of a job has type "end"."""
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for job in jobs:

            def emit(event: dict, job: _Job = job) -> None:
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
                    job.track.end(event, _finish(event)[0])
                    self.running.pop(id(job.sequence), None)
                yield job, event, text
        finally:
            for job in jobs:
                if job.end is None:
                    job.track.abort()
                if job.sequence is not None:
                    job.sequence.cancel()
                    self.running.pop(id(job.sequence), None)

    async def _run(self, jobs: list[_Job]) -> None:
        async for _ in self._events(jobs):
            pass

    @staticmethod
    def _usage(jobs: list[_Job]) -> dict:
        prompts = {id(job.track): len(job.input_ids) for job in jobs}
        prompt = sum(prompts.values())
        completion = sum(job.end["generated_tokens"] for job in jobs if job.end)
        return {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "completion_tokens_details": None,
        }

    # -- chat --------------------------------------------------------------------------------------------------
    def _chat_prompt(self, body: dict) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise _missing("messages")
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

    @staticmethod
    def _chat_logprobs(entries: list) -> dict:
        def item(token: dict) -> dict:
            return {
                "token": token["text"],
                "logprob": token["logprob"] if token["logprob"] is not None else -9999.0,
                "bytes": list(token["text"].encode()),
            }

        return {"content": [{**item(token), "top_logprobs": [item(top) for top in tops]} for token, tops in entries]}

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
                reason, stop_reason = _finish(job.end)
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
                        "logprobs": self._chat_logprobs(job.logprobs) if want_logprobs else None,
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
                    "usage": self._usage(jobs),
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
        self, jobs: list[_Job], meta: dict, include_usage: bool, want_logprobs: bool
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
                    "logprobs": self._chat_logprobs(job.logprobs[-1:]) if want_logprobs else None,
                    "finish_reason": _finish(event)[0] if ended else None,
                }
                if ended:
                    choice["stop_reason"] = _finish(event)[1]
                yield chunk([choice])
        except RequestError as exc:
            yield _sse(exc.body())
            yield _sse("[DONE]")
            return
        if include_usage:
            yield chunk([], usage=self._usage(jobs))
        yield _sse("[DONE]")

    # -- completions -------------------------------------------------------------------------------------------
    def _prompts(self, body: dict) -> list[list[int]]:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt = [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [prompt]  # one prompt as token ids
        if not isinstance(prompt, list) or not prompt:
            raise _missing("prompt")
        prompts = []
        for item in prompt:
            if isinstance(item, str):
                prompts.append(self.tokenizer(item).input_ids)
            elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
                prompts.append(item)
            else:
                raise RequestError("Prompt must be a string, a list of strings or a list of token ids")
        return prompts

    @staticmethod
    def _completion_logprobs(entries: list, offset: int = 0) -> dict:
        tokens, logprobs, tops, offsets = [], [], [], []
        for token, top in entries:
            offsets.append(offset)
            offset += len(token["text"])
            tokens.append(token["text"])
            logprobs.append(token["logprob"])
            tops.append({t["text"]: t["logprob"] for t in top})
        return {"text_offset": offsets, "token_logprobs": logprobs, "tokens": tokens, "top_logprobs": tops}

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
                reason, stop_reason = _finish(job.end)
                choices.append(
                    {
                        "index": job.index,
                        "text": job.output.text,
                        "logprobs": self._completion_logprobs(job.logprobs) if want_logprobs else None,
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
                    "usage": self._usage(jobs),
                    "kv_transfer_params": None,
                }
            )

        return await self._guard(call)

    async def _completion_stream(
        self, jobs: list[_Job], meta: dict, include_usage: bool, want_logprobs: bool
    ) -> AsyncIterator[bytes]:
        try:
            async for job, event, text in self._events(jobs):
                ended = event["type"] == "end"
                if not text and not ended:
                    continue
                reason, stop_reason = _finish(event) if ended else (None, None)
                logprobs = self._completion_logprobs(job.logprobs[-1:]) if want_logprobs else None
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
            yield _sse({**meta, "object": "text_completion", "choices": [], "usage": self._usage(jobs)})
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
                raise _missing("prompt")
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
                raise _missing("tokens")
            return JSONResponse({"prompt": self.tokenizer.decode(tokens)})

        return await self._guard(call)
