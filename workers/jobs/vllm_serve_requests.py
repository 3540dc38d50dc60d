"""vllm_serve_api.py's requests: vLLM's sampling parameters and their checks (vllm/sampling_params.py and the
renderer's length checks of the pinned release), its error body, the text of one answer as vLLM streams it (stop
strings cut off), and the per-request metrics vLLM records. Imports nothing from Django.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from workers.jobs.serve_engine import Params
from workers.jobs.serve_metrics import VllmMetrics


class RequestError(Exception):
    """vLLM's ErrorResponse: a message, its type, the HTTP status and optionally the parameter at fault."""

    def __init__(self, message: str, error_type: str = "BadRequestError", status: int = 400, param: str | None = None):
        super().__init__(message)
        self.message, self.error_type, self.status, self.param = message, error_type, status, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.status}}


def missing(field_name: str) -> RequestError:
    # What pydantic says through vLLM's RequestValidationError handler (a 400, not FastAPI's 422).
    return RequestError(
        f"[{{'type': 'missing', 'loc': ('body', '{field_name}'), 'msg': 'Field required', 'input': None}}]"
    )


def finish(end: dict) -> tuple[str, str | None]:
    """vLLM's finish_reason and stop_reason: EOS is "stop" with no stop_reason, a stop string "stop" with it."""
    if end["finish_reason"] == "length":
        return "length", None
    if end["finish_reason"] == "stop_sequence":
        return "stop", end.get("stop_string")
    return "stop", None


class Output:
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


class Track:
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
class Job:
    """One sequence of a request: its prompt, sampling, where its choice goes and what it has produced."""

    index: int
    input_ids: list[int]
    params: Params
    track: Track
    output: Output
    sequence: object | None = None
    end: dict | None = None
    logprobs: list = field(default_factory=list)


def sampling(
    body: dict, prompt_tokens: int, *, chat: bool, max_model_len: int, defaults: dict, max_logprobs: int
) -> tuple[Params, int, int]:
    """Engine parameters, n and max_tokens from a request, checked as vLLM's SamplingParams checks them."""

    def number(name: str, default=None):
        value = body.get(name, defaults.get(name, default))
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
    limit = max_model_len
    max_tokens = number(name, defaults.get("max_tokens"))
    if max_tokens is not None and max_tokens > limit:
        raise RequestError(
            f"{name}={max_tokens} cannot be greater than max_model_len={limit}. Please request fewer output tokens.",
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
    top_logprobs = logprobs_wanted(body, chat=chat, max_logprobs=max_logprobs)
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


def logprobs_wanted(body: dict, *, chat: bool, max_logprobs: int) -> int:
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
    if wanted > max_logprobs:
        raise RequestError(f"Requested sample logprobs of {wanted}, which is greater than max allowed: {max_logprobs}")
    return max(wanted, 1)  # the engine reports the chosen token's logprob alongside its top tokens


def usage(jobs: list[Job]) -> dict:
    prompts = {id(job.track): len(job.input_ids) for job in jobs}
    prompt = sum(prompts.values())
    completion = sum(job.end["generated_tokens"] for job in jobs if job.end)
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "completion_tokens_details": None,
    }


def chat_logprobs(entries: list) -> dict:
    def item(token: dict) -> dict:
        return {
            "token": token["text"],
            "logprob": token["logprob"] if token["logprob"] is not None else -9999.0,
            "bytes": list(token["text"].encode()),
        }

    return {"content": [{**item(token), "top_logprobs": [item(top) for top in tops]} for token, tops in entries]}


def completion_logprobs(entries: list, offset: int = 0) -> dict:
    tokens, logprobs, tops, offsets = [], [], [], []
    for token, top in entries:
        offsets.append(offset)
        offset += len(token["text"])
        tokens.append(token["text"])
        logprobs.append(token["logprob"])
        tops.append({t["text"]: t["logprob"] for t in top})
    return {"text_offset": offsets, "token_logprobs": logprobs, "tokens": tokens, "top_logprobs": tops}
