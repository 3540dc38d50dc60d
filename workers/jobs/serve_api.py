"""serve.py's HTTP side: TGI's routes, bodies, SSE framing and errors (TGI 3.3's router,
`router/src/server.rs`) over the batching engine, as a Starlette app. Imports nothing from Django.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from workers.jobs.serve_engine import Engine, Params
from workers.jobs.serve_metrics import Metrics

VERSION = "3.3.6"
KEEPALIVE_SECONDS = 15.0
UNKNOWN_ADAPTERS_LOGGED = 32  # distinct unknown adapter names worth a log line; a client cannot flood the log
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass
class Limits:
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_top_n_tokens: int
    max_input_tokens: int
    max_total_tokens: int
    validation_workers: int
    max_client_batch_size: int
    payload_limit: int


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type

    def body(self) -> dict:
        return {"error": self.message, "error_type": self.error_type}


class PlainError(Exception):
    """What axum's extractors answer: a status and a plain-text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def _invalid(message: str) -> ApiError:
    return ApiError(422, f"Input validation error: {message}", "validation")


def submit(engine: Engine, input_ids: list[int], params: Params) -> tuple[asyncio.Queue, object]:
    """Hand a request to the engine; its events arrive on the returned queue (from the engine's thread)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    sequence = engine.submit(input_ids, params, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event))
    return queue, sequence


def flatten_messages(messages: list) -> list[dict]:
    """OpenAI chat messages as a chat template takes them: text parts joined, other parts dropped."""
    flat = []
    for message in messages:
        message = message if isinstance(message, dict) else {}
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
            )
        flat.append({"role": message.get("role", "user"), "content": content or ""})
    return flat


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data:{data}\n\n".encode()


class ServeApp:
    def __init__(
        self,
        engine: Engine,
        tokenizer,
        metrics: Metrics,
        limits: Limits,
        *,
        model_id: str,
        api_key: str | None,
        compute_type: str,
        adapters: Collection[str] = (),
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.engine, self.tokenizer, self.metrics, self.limits = engine, tokenizer, metrics, limits
        self.model_id, self.api_key, self.compute_type = model_id, api_key, compute_type
        self.adapters, self.warn = frozenset(adapters), warn
        self.unknown_adapters: set[str] = set()
        self.in_flight = 0
        self.healthy = True

    # -- plumbing --------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        routes = [
            Route("/", self.health, methods=["GET"]),
            Route("/", self.compat_generate, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/ping", self.health, methods=["GET"]),
            Route("/info", self.info, methods=["GET"]),
            Route("/metrics", self.render_metrics, methods=["GET"]),
            Route("/generate", self.generate, methods=["POST"]),
            Route("/generate_stream", self.generate_stream, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/chat_tokenize", self.chat_tokenize, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    async def _body(self, request: Request, *, auth: bool = True) -> dict:
        if auth and self.api_key is not None:
            given = request.headers.get("authorization", "")
            if given.lower() != f"bearer {self.api_key}".lower():
                raise PlainError(401, "")
        raw = await request.body()
        if len(raw) > self.limits.payload_limit:
            raise PlainError(413, "Failed to buffer the request body: length limit exceeded")
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise PlainError(400, f"Failed to parse the request body as JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise PlainError(422, "Failed to deserialize the JSON body into the target type: expected a JSON object")
        return body

    def _acquire(self) -> None:
        if self.in_flight >= self.limits.max_concurrent_requests:
            self.metrics.inc("tgi_request_failure", err="overloaded")
            raise ApiError(429, "Model is overloaded", "overloaded")
        self.in_flight += 1

    def _release(self) -> None:
        self.in_flight -= 1

    def _fail(self, exc: ApiError) -> None:
        kind = {
            "validation": "validation",
            "overloaded": "overloaded",
            "generation": "generation",
            "template_error": "template",
        }.get(exc.error_type, exc.error_type)
        if exc.error_type != "overloaded":  # counted in _acquire
            self.metrics.inc("tgi_request_failure", err=kind)
        if exc.error_type == "generation":
            self.healthy = False

    async def _guard(self, call) -> Response:
        try:
            return await call()
        except PlainError as exc:
            return PlainTextResponse(exc.text, status_code=exc.status)
        except ApiError as exc:
            self._fail(exc)
            return JSONResponse(exc.body(), status_code=exc.status)

    # -- validation ----------------------------------------------------------------------------------------
    @staticmethod
    def _require(body: dict, field: str) -> None:
        """Shape errors are axum's: a plain-text 422 before any stream starts."""
        if not isinstance(body.get(field), str):
            raise PlainError(422, f"Failed to deserialize the JSON body into the target type: missing field `{field}`")

    def _params(self, body: dict, *, stream: bool, compat: bool) -> tuple[str, list[int], Params, dict]:
        self._require(body, "inputs")
        inputs = body["inputs"]
        given = body.get("parameters")
        raw = given if isinstance(given, dict) else {}
        # TGI: without a parameters object, do_sample defaults to true; inside one, to false.
        do_sample = (given is None) if raw.get("do_sample") is None else bool(raw["do_sample"])
        if not inputs:
            raise _invalid("`inputs` cannot be empty")
        best_of = raw.get("best_of")
        if best_of is not None:
            if best_of <= 0 or best_of > self.limits.max_best_of:
                raise _invalid(f"`best_of` must be > 0 and <= {self.limits.max_best_of}. Given: {best_of}")
            if best_of > 1 and stream:
                raise _invalid("`best_of` != 1 is not supported when streaming tokens")
        if raw.get("decoder_input_details") and stream:
            raise _invalid("`decoder_input_details` == true is not supported when streaming tokens")
        input_ids = self.tokenizer(inputs).input_ids
        truncate = raw.get("truncate")
        if truncate is not None:
            if not 0 < truncate <= self.limits.max_input_tokens:
                raise _invalid(
                    f"`truncate` must be strictly positive and less than {self.limits.max_input_tokens}. "
                    f"Given: {truncate}"
                )
            input_ids = input_ids[-truncate:]
        params = self._checked(raw, do_sample=do_sample, input_ids=input_ids)
        params.adapter = self._adapter(raw.get("adapter_id"), field="parameters.adapter_id")
        if best_of and best_of > 1:
            if not params.sampling:
                raise _invalid("you must use sampling when `best_of` is > 1")
            if params.seed is not None:
                raise _invalid("`seed` must not be set when `best_of` > 1")
        full_text = raw.get("return_full_text")
        if full_text is None:
            full_text = compat  # POST / prepends the prompt for a local model unless told not to
        extra = {
            "details": bool(raw.get("details")) or params.decoder_input_details,
            "best_of": best_of or 1,
            "return_full_text": bool(full_text),
        }
        return inputs, input_ids, params, extra

    def _checked(self, raw: dict, *, do_sample: bool, input_ids: list[int]) -> Params:
        """TGI's parameter and length validation (router/src/validation.rs), shared by every route."""
        limits = self.limits
        temperature, top_p, typical_p = raw.get("temperature"), raw.get("top_p"), raw.get("typical_p")
        top_k, repetition, frequency = raw.get("top_k"), raw.get("repetition_penalty"), raw.get("frequency_penalty")
        if temperature is not None and temperature <= 0:
            raise _invalid("`temperature` must be strictly positive")
        if repetition is not None and repetition <= 0:
            raise _invalid("`repetition_penalty` must be strictly positive")
        if frequency is not None and not -2.0 <= frequency <= 2.0:
            raise _invalid("`frequency_penalty` must be >= -2.0 and <= 2.0")
        if top_p is not None and not 0.0 < top_p < 1.0:
            raise _invalid("`top_p` must be > 0.0 and < 1.0")
        if typical_p is not None and not 0.0 < typical_p < 1.0:
            raise _invalid("`typical_p` must be > 0.0 and < 1.0")
        if top_k is not None and top_k <= 0:
            raise _invalid("`top_k` must be strictly positive")
        stop = raw.get("stop") or []
        if len(stop) > limits.max_stop_sequences:
            raise _invalid(f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stop)}")
        top_n = raw.get("top_n_tokens") or 0
        if not 0 <= top_n <= limits.max_top_n_tokens:
            raise _invalid(f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n}")
        if raw.get("grammar") is not None:
            raise _invalid("grammar is not supported")
        seed = raw.get("seed")
        if seed is not None and seed < 0:
            raise _invalid("`seed` must be >= 0")
        n = len(input_ids)
        if n > limits.max_input_tokens:
            raise _invalid(f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {n}")
        max_new = raw.get("max_new_tokens")
        if max_new is not None and max_new <= 0:
            raise _invalid("`max_new_tokens` must be strictly positive")
        if max_new is None:
            max_new = max(limits.max_total_tokens - n, 1)
        if n + max_new > limits.max_total_tokens:
            raise _invalid(
                f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
                f"Given: {n} `inputs` tokens and {max_new} `max_new_tokens`"
            )
        self.metrics.observe("tgi_request_input_length", n)
        self.metrics.observe("tgi_request_max_new_tokens", max_new)
        return Params(
            max_new_tokens=max_new,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            typical_p=typical_p,
            repetition_penalty=repetition,
            frequency_penalty=frequency,
            stop=list(stop),
            seed=seed,
            top_n_tokens=top_n,
            decoder_input_details=bool(raw.get("decoder_input_details")),
        )

    # -- running requests ------------------------------------------------------------------------------------
    def _events(self, input_ids: list[int], params: Params) -> tuple[asyncio.Queue, object]:
        return submit(self.engine, input_ids, params)

    async def _run_to_end(self, input_ids: list[int], params: Params) -> dict:
        queue, sequence = self._events(input_ids, params)
        try:
            while True:
                event = await queue.get()
                if event["type"] == "end":
                    return event
                if event["type"] == "error":
                    raise ApiError(424, event["error"], event["error_type"])
        finally:
            sequence.cancel()

    def _record_success(self, started: float, end: dict) -> None:
        self.metrics.inc("tgi_request_success")
        self.metrics.observe("tgi_request_duration", time.monotonic() - started)
        self.metrics.observe("tgi_request_queue_duration", end["queue_seconds"])
        self.metrics.observe("tgi_request_inference_duration", end["inference_seconds"])
        self.metrics.observe("tgi_request_generated_tokens", end["generated_tokens"])
        if end["generated_tokens"]:
            self.metrics.observe(
                "tgi_request_mean_time_per_token_duration", end["inference_seconds"] / end["generated_tokens"]
            )

    @staticmethod
    def _details(end: dict, *, prefill: bool) -> dict:
        details = {
            "finish_reason": end["finish_reason"],
            "generated_tokens": end["generated_tokens"],
            "seed": end["seed"],
            "prefill": end["prefill"] if prefill else [],
            "tokens": end["tokens"],
        }
        if any(end["top_tokens_all"]):
            details["top_tokens"] = end["top_tokens_all"]
        return details

    async def _generate_one(self, body: dict, *, compat: bool) -> tuple[dict, dict]:
        started = time.monotonic()
        self.metrics.inc("tgi_request_count")
        self._acquire()
        try:
            inputs, input_ids, params, extra = self._params(body, stream=False, compat=compat)
            runs = [params]
            if extra["best_of"] > 1:
                runs = [Params(**{**params.__dict__, "seed": None}) for _ in range(extra["best_of"])]
            ends = await asyncio.gather(*(self._run_to_end(input_ids, run) for run in runs))
        finally:
            self._release()
        ends.sort(key=lambda end: -sum(t["logprob"] or 0.0 for t in end["tokens"]))
        best = ends[0]
        self._record_success(started, best)
        text = (inputs + best["generated_text"]) if extra["return_full_text"] else best["generated_text"]
        response: dict = {"generated_text": text}
        if extra["details"]:
            response["details"] = self._details(best, prefill=params.decoder_input_details)
            if len(ends) > 1:
                response["details"]["best_of_sequences"] = [
                    {
                        "generated_text": (inputs if extra["return_full_text"] else "") + end["generated_text"],
                        **self._details(end, prefill=params.decoder_input_details),
                    }
                    for end in ends[1:]
                ]
        total = time.monotonic() - started
        per_token = best["inference_seconds"] / max(best["generated_tokens"], 1)
        headers = {
            "x-compute-type": self.compute_type,
            "x-compute-time": f"{total:.6f}",
            "x-compute-characters": str(len(inputs)),
            "x-total-time": str(int(total * 1000)),
            "x-validation-time": "0",
            "x-queue-time": str(int(best["queue_seconds"] * 1000)),
            "x-inference-time": str(int(best["inference_seconds"] * 1000)),
            "x-time-per-token": str(int(per_token * 1000)),
            "x-prompt-tokens": str(len(input_ids)),
            "x-generated-tokens": str(best["generated_tokens"]),
        }
        return response, headers

    async def _stream(self, body: dict, *, compat: bool) -> AsyncIterator[bytes]:
        """TGI's /generate_stream: 200 always; errors are one event, then the body ends."""
        started = time.monotonic()
        self.metrics.inc("tgi_request_count")
        try:
            self._acquire()
        except ApiError as exc:
            yield _sse(exc.body())
            return
        sequence = None
        try:
            inputs, input_ids, params, extra = self._params(body, stream=True, compat=compat)
            queue, sequence = self._events(input_ids, params)
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b":\n\n"
                    continue
                if event["type"] == "error":
                    raise ApiError(424, event["error"], event["error_type"])
                message: dict = {"index": event["index"], "token": event["token"]}
                if event["top_tokens"]:
                    message["top_tokens"] = event["top_tokens"]
                message["generated_text"], message["details"] = None, None
                if event["type"] == "end":
                    text = event["generated_text"]
                    message["generated_text"] = (inputs + text) if extra["return_full_text"] else text
                    if extra["details"]:
                        message["details"] = {
                            "finish_reason": event["finish_reason"],
                            "generated_tokens": event["generated_tokens"],
                            "seed": event["seed"],
                            "input_length": event["input_length"],
                        }
                    self._record_success(started, event)
                    yield _sse(message)
                    return
                yield _sse(message)
        except ApiError as exc:
            self._fail(exc)
            yield _sse(exc.body())
        finally:
            if sequence is not None:
                sequence.cancel()
            self._release()

    # -- routes --------------------------------------------------------------------------------------------------
    async def compat_generate(self, request: Request) -> Response:
        async def call() -> Response:
            body = await self._body(request)
            self._require(body, "inputs")
            if body.get("stream"):
                return StreamingResponse(
                    self._stream(body, compat=True),
                    media_type="text/event-stream",
                    headers={**SSE_HEADERS, "x-compute-type": self.compute_type},
                )
            response, headers = await self._generate_one(body, compat=True)
            return JSONResponse([response], headers=headers)

        return await self._guard(call)

    async def generate(self, request: Request) -> Response:
        async def call() -> Response:
            response, headers = await self._generate_one(await self._body(request), compat=False)
            return JSONResponse(response, headers=headers)

        return await self._guard(call)

    async def generate_stream(self, request: Request) -> Response:
        async def call() -> Response:
            body = await self._body(request)
            self._require(body, "inputs")
            return StreamingResponse(
                self._stream(body, compat=False),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, "x-compute-type": self.compute_type},
            )

        return await self._guard(call)

    async def health(self, request: Request) -> Response:
        if not self.healthy:
            # As TGI: after a generation error, a one-token generation decides.
            try:
                await self._run_to_end(self.tokenizer("liveness").input_ids, Params(max_new_tokens=1))
                self.healthy = True
            except ApiError:
                return JSONResponse({"error": "unhealthy", "error_type": "healthcheck"}, status_code=503)
        return Response(status_code=200)

    async def info(self, request: Request) -> Response:
        limits = self.limits
        return JSONResponse(
            {
                "model_id": self.model_id,
                "model_sha": None,
                "model_pipeline_tag": None,
                "max_concurrent_requests": limits.max_concurrent_requests,
                "max_best_of": limits.max_best_of,
                "max_stop_sequences": limits.max_stop_sequences,
                "max_input_tokens": limits.max_input_tokens,
                "max_total_tokens": limits.max_total_tokens,
                "validation_workers": limits.validation_workers,
                "max_client_batch_size": limits.max_client_batch_size,
                # TGI's router reported it in 1.x and early 2.x (its 3.x Info has no such field): the batch's
                # token budget, which the benchmark's generator divides tgi_batch_current_max_tokens by (KV fill).
                "max_batch_total_tokens": self.engine.max_batch_total_tokens,
                "router": "llmdeploy-serve",  # not TGI's router: the console tells them apart by served_by
                "version": VERSION,
                "sha": None,
                "docker_label": None,
                "served_by": "workers.jobs.serve",
            }
        )

    async def render_metrics(self, request: Request) -> Response:
        self.metrics.set("tgi_queue_size", self.engine.queue_size)
        self.metrics.set("tgi_batch_current_size", self.engine.batch_size)
        self.metrics.set("tgi_batch_current_max_tokens", self.engine.batch_max_tokens())
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": self.model_id, "object": "model", "created": 0, "owned_by": self.model_id}],
            }
        )

    async def tokenize(self, request: Request) -> Response:
        async def call() -> Response:
            body = await self._body(request)
            self._require(body, "inputs")
            return JSONResponse(self._tokens(body["inputs"], add_special=True))

        return await self._guard(call)

    def _tokens(self, text: str, *, add_special: bool) -> list[dict]:
        encoded = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special)
        return [
            {"id": token, "text": text[start:stop], "start": start, "stop": stop}
            for token, (start, stop) in zip(encoded.input_ids, encoded.offset_mapping, strict=True)
        ]

    # -- OpenAI-compatible routes -------------------------------------------------------------------------------
    def _template(self, body: dict) -> str:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise PlainError(422, "Failed to deserialize the JSON body into the target type: missing field `messages`")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(422, "Template error: template not found", "template_error")
        try:
            return self.tokenizer.apply_chat_template(
                flatten_messages(messages), tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:
            raise ApiError(422, f"Template error: {exc}", "template_error") from exc

    def _openai_params(self, body: dict, input_ids: list[int], *, chat: bool) -> Params:
        temperature = body.get("temperature")
        stop = body.get("stop") or []
        presence = body.get("presence_penalty")
        raw = {
            "temperature": None if temperature == 0 else temperature,
            "top_p": body.get("top_p"),
            "max_new_tokens": body.get("max_tokens", body.get("max_completion_tokens")),
            "stop": [stop] if isinstance(stop, str) else list(stop),
            "seed": body.get("seed"),
            "frequency_penalty": body.get("frequency_penalty"),
            "top_n_tokens": (body.get("top_logprobs") or (1 if body.get("logprobs") else 0)) if chat else 0,
            # TGI's chat route turns presence_penalty into repetition_penalty = p + 2.
            "repetition_penalty": (None if presence is None else presence + 2.0)
            if chat
            else body.get("repetition_penalty"),
        }
        # TGI: temperature 0 means greedy; otherwise the OpenAI routes sample.
        params = self._checked(raw, do_sample=not (temperature is not None and temperature == 0), input_ids=input_ids)
        params.adapter = self._adapter(body.get("model"), field="model")
        return params

    def _adapter(self, name: object, *, field: str) -> str | None:
        """The loaded adapter a request names, or None for the base model. As TGI (router/src/server.rs and the
        shard's ADAPTER_TO_INDEX): no name, "tgi" on the OpenAI routes, the model's own id, and a name no loaded
        adapter has all run the base model; TGI does not refuse an unknown adapter, so serve.py does not either,
        and says so in its log."""
        if name is not None and not isinstance(name, str):
            raise PlainError(
                422, f"Failed to deserialize the JSON body into the target type: {field}: invalid type, expected string"
            )
        if not name or name in ("tgi", self.model_id):
            return None
        if name in self.adapters:
            return name
        if self.warn and name not in self.unknown_adapters and len(self.unknown_adapters) < UNKNOWN_ADAPTERS_LOGGED:
            self.unknown_adapters.add(name)
            # json.dumps: a name cannot break the line or forge another one in the log the console diagnoses.
            loaded = ", ".join(sorted(self.adapters)) or "none"
            self.warn(f"no LoRA adapter {json.dumps(name[:200])} is loaded (loaded: {loaded}): the base model answers")
        return None

    def _chat_meta(self, body: dict) -> dict:
        model = body.get("model")
        return {
            "id": "",
            "created": int(time.time()),
            "model": model if model not in (None, "tgi") else self.model_id,
            "system_fingerprint": f"{VERSION}-native",
        }

    @staticmethod
    def _chat_finish(reason: str) -> str:
        return "stop" if reason == "eos_token" else reason

    @staticmethod
    def _logprobs(token: dict, top: list[dict] | None) -> dict:
        return {
            "content": [
                {
                    "token": token["text"],
                    "logprob": token["logprob"],
                    "top_logprobs": [{"token": t["text"], "logprob": t["logprob"]} for t in (top or [])],
                }
            ]
        }

    async def chat_tokenize(self, request: Request) -> Response:
        async def call() -> Response:
            text = self._template(await self._body(request, auth=False))
            return JSONResponse({"tokenize_response": self._tokens(text, add_special=False), "templated_text": text})

        return await self._guard(call)

    async def chat_completions(self, request: Request) -> Response:
        async def call() -> Response:
            body = await self._body(request)
            started = time.monotonic()
            self.metrics.inc("tgi_request_count")
            text = self._template(body)
            input_ids = self.tokenizer(text, add_special_tokens=False).input_ids
            params = self._openai_params(body, input_ids, chat=True)
            meta = self._chat_meta(body)
            want_logprobs = bool(body.get("logprobs"))
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return StreamingResponse(
                    self._chat_stream(input_ids, params, meta, started, include_usage, want_logprobs),
                    media_type="text/event-stream",
                    headers=SSE_HEADERS,
                )
            self._acquire()
            try:
                end = await self._run_to_end(input_ids, params)
            finally:
                self._release()
            self._record_success(started, end)
            logprobs = None
            if want_logprobs:
                logprobs = {
                    "content": [
                        self._logprobs(t, top)["content"][0]
                        for t, top in zip(
                            end["tokens"], end["top_tokens_all"] or [None] * len(end["tokens"]), strict=True
                        )
                    ]
                }
            return JSONResponse(
                {
                    "object": "chat.completion",
                    **meta,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": end["generated_text"]},
                            "logprobs": logprobs,
                            "finish_reason": self._chat_finish(end["finish_reason"]),
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(input_ids),
                        "completion_tokens": end["generated_tokens"],
                        "total_tokens": len(input_ids) + end["generated_tokens"],
                    },
                }
            )

        return await self._guard(call)

    async def _chat_stream(
        self, input_ids: list[int], params: Params, meta: dict, started: float, include_usage: bool, want_logprobs: bool
    ) -> AsyncIterator[bytes]:
        try:
            self._acquire()
        except ApiError as exc:
            yield _sse({"error": {"message": exc.message, "http_status_code": exc.status}})
            return
        queue, sequence = self._events(input_ids, params)
        try:
            while True:
                event = await queue.get()
                if event["type"] == "error":
                    self._fail(ApiError(424, event["error"], event["error_type"]))
                    yield _sse({"error": {"message": event["error"], "http_status_code": 424}})
                    return
                token = event["token"]
                finish = self._chat_finish(event["finish_reason"]) if event["type"] == "end" else None
                choice = {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "" if token["special"] else token["text"]},
                    "logprobs": self._logprobs(token, event["top_tokens"]) if want_logprobs else None,
                    "finish_reason": finish,
                }
                yield _sse({"object": "chat.completion.chunk", **meta, "choices": [choice], "usage": None})
                if event["type"] == "end":
                    self._record_success(started, event)
                    if include_usage:
                        usage = {
                            "prompt_tokens": len(input_ids),
                            "completion_tokens": event["generated_tokens"],
                            "total_tokens": len(input_ids) + event["generated_tokens"],
                        }
                        yield _sse({"object": "chat.completion.chunk", **meta, "choices": [], "usage": usage})
                    yield _sse("[DONE]")
                    return
        finally:
            sequence.cancel()
            self._release()

    async def completions(self, request: Request) -> Response:
        async def call() -> Response:
            body = await self._body(request)
            if body.get("suffix") is not None:
                raise ApiError(422, "suffix not supported", "validation")
            prompts = body.get("prompt")
            prompts = [prompts] if isinstance(prompts, str) else prompts
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise PlainError(
                    422, "Failed to deserialize the JSON body into the target type: missing field `prompt`"
                )
            if len(prompts) > self.limits.max_client_batch_size:
                raise _invalid(
                    f"Number of prompts must be <= {self.limits.max_client_batch_size}. Given: {len(prompts)}"
                )
            started = time.monotonic()
            meta = self._chat_meta(body)
            jobs = []
            for prompt in prompts:
                self.metrics.inc("tgi_request_count")
                ids = self.tokenizer(prompt).input_ids
                jobs.append((ids, self._openai_params(body, ids, chat=False)))
            if body.get("stream"):
                return StreamingResponse(
                    self._completion_stream(jobs, meta, started), media_type="text/event-stream", headers=SSE_HEADERS
                )
            self._acquire()
            try:
                ends = await asyncio.gather(*(self._run_to_end(ids, params) for ids, params in jobs))
            finally:
                self._release()
            for end in ends:
                self._record_success(started, end)
            prompt_tokens = sum(len(ids) for ids, _ in jobs)
            completion_tokens = sum(end["generated_tokens"] for end in ends)
            return JSONResponse(
                {
                    "object": "text_completion",
                    **meta,
                    "choices": [
                        {
                            "index": i,
                            "text": end["generated_text"],
                            "logprobs": None,
                            "finish_reason": self._chat_finish(end["finish_reason"]),
                        }
                        for i, end in enumerate(ends)
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
            )

        return await self._guard(call)

    async def _completion_stream(self, jobs: list, meta: dict, started: float) -> AsyncIterator[bytes]:
        try:
            self._acquire()
        except ApiError as exc:
            yield _sse({"error": {"message": exc.message, "http_status_code": exc.status}})
            return
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        sequences = []
        for index, (ids, params) in enumerate(jobs):

            def emit(event: dict, index: int = index) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (index, event))

            sequences.append(self.engine.submit(ids, params, emit))
        remaining = len(jobs)
        usage = {"prompt_tokens": sum(len(ids) for ids, _ in jobs), "completion_tokens": 0}
        try:
            while remaining:
                index, event = await queue.get()
                if event["type"] == "error":
                    self._fail(ApiError(424, event["error"], event["error_type"]))
                    yield _sse({"error": {"message": event["error"], "http_status_code": 424}})
                    return
                text = "" if event["token"]["special"] else event["token"]["text"]
                chunk = {
                    "object": "text_completion",
                    "id": meta["id"],
                    "created": meta["created"],
                    "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": ""}],
                    "model": meta["model"],
                    "system_fingerprint": meta["system_fingerprint"],
                }
                if event["type"] == "end":
                    remaining -= 1
                    self._record_success(started, event)
                    usage["completion_tokens"] += event["generated_tokens"]
                    chunk["choices"][0]["finish_reason"] = event["finish_reason"]
                    if not remaining:
                        chunk["usage"] = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
                yield _sse(chunk)
            yield _sse("[DONE]")
        finally:
            for sequence in sequences:
                sequence.cancel()
            self._release()
