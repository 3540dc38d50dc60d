"""TGI's native generate protocol spoken in front of a server that has only OpenAI's (vLLM).

The gateway's /llm/<deployment>/generate, /generate_stream and / answer for a vLLM deployment by calling its
/v1/completions: a TGI request becomes a completion request (`completion_request`), the completion becomes TGI's
answer (`generate_answer`), its event stream becomes TGI's events (`GenerateStream`, fed the bytes as they come),
and an error becomes TGI's {"error", "error_type"}. Pure functions over JSON documents: no I/O, no Django.

What cannot be translated is refused by name (TranslationError), never silently dropped: typical_p, watermark,
best_of > 1, top_n_tokens and grammar have no /v1/completions equivalent the answer could be read back from.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

UNKNOWN_ID = -1  # a token id the server did not report (vLLM before return_token_ids)
UNSUPPORTED = {
    "typical_p": "typical_p",
    "watermark": "watermark",
    "top_n_tokens": "top_n_tokens",
    "grammar": "grammar (use /v1/completions with response_format or structured outputs)",
}


class TranslationError(Exception):
    """A TGI request the completion API cannot express; the message names the parameter."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class GenerateRequest:
    """What the answer's translation needs to know of the TGI request."""

    inputs: str
    stream: bool
    details: bool
    decoder_input_details: bool
    return_full_text: bool
    seed: int | None  # reported in details when sampling, as TGI does (null when greedy)
    compat: bool = False  # POST / answers a list of one answer


def _number(parameters: dict, name: str, kind: type, check=None, message: str = ""):
    value = parameters.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise TranslationError(f"`{name}` must be {'an integer' if kind is int else 'a number'}")
    if check is not None and not check(value):
        raise TranslationError(message)
    return kind(value)


def _stop(parameters: dict) -> list[str]:
    stop = parameters.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise TranslationError("`stop` must be a list of strings")
    return stop


def completion_request(body: dict, *, model: str, stream: bool, compat: bool = False) -> tuple[dict, GenerateRequest]:
    """A TGI generate body as the body of a vLLM /v1/completions request, and what reading the answer needs.

    Sampling follows TGI: greedy unless do_sample is true or a warper (temperature other than 1, top_k, top_p)
    is set; greedy is temperature 0 for vLLM. TGI's validation is kept where vLLM's is looser (temperature 0 is
    refused as TGI refuses it, not taken as greedy). The stop sequence stays in the text, as in TGI's answer."""
    inputs = body.get("inputs")
    if not isinstance(inputs, str) or not inputs:
        raise TranslationError("`inputs` cannot be empty")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise TranslationError("`parameters` must be an object")
    for name, label in UNSUPPORTED.items():
        if parameters.get(name) not in (None, False):
            raise TranslationError(f"`{label}` is not offered for a vLLM deployment on the TGI routes")
    if (parameters.get("best_of") or 1) != 1:
        raise TranslationError("`best_of` > 1 is not offered for a vLLM deployment on the TGI routes")
    max_new_tokens = _number(parameters, "max_new_tokens", int, lambda v: v > 0, "`max_new_tokens` must be > 0")
    temperature = _number(parameters, "temperature", float, lambda v: v > 0, "`temperature` must be strictly positive")
    top_p = _number(parameters, "top_p", float, lambda v: 0 < v < 1, "`top_p` must be > 0.0 and < 1.0")
    top_k = _number(parameters, "top_k", int, lambda v: v > 0, "`top_k` must be strictly positive")
    repetition_penalty = _number(
        parameters, "repetition_penalty", float, lambda v: v > 0, "`repetition_penalty` must be strictly positive"
    )
    frequency_penalty = _number(
        parameters, "frequency_penalty", float, lambda v: -2 <= v <= 2, "`frequency_penalty` must be >= -2 and <= 2"
    )
    seed = _number(parameters, "seed", int, lambda v: v >= 0, "`seed` must be positive")
    truncate = _number(parameters, "truncate", int, lambda v: v > 0, "`truncate` must be strictly positive")
    stop = _stop(parameters)
    decoder_input_details = bool(parameters.get("decoder_input_details"))
    if decoder_input_details and stream:
        raise TranslationError("`decoder_input_details` == true is not supported when streaming tokens")
    sampling = (
        bool(parameters.get("do_sample"))
        or any(value is not None for value in (top_k, top_p))
        or temperature not in (None, 1.0)
    )
    request = {
        "model": model,
        "prompt": inputs,
        # null: up to the end of the context, as TGI without max_new_tokens (vLLM's completions default is 16)
        "max_tokens": max_new_tokens,
        "temperature": (temperature or 1.0) if sampling else 0.0,
        "stream": stream,
        # Token ids and log-probabilities make TGI's token objects; 0 asks for the chosen token's alone.
        "return_token_ids": True,
    }
    if stream or parameters.get("details"):
        request["logprobs"] = 0
    if sampling:
        request.update({k: v for k, v in (("top_p", top_p), ("top_k", top_k), ("seed", seed)) if v is not None})
    if repetition_penalty is not None:
        request["repetition_penalty"] = repetition_penalty
    if frequency_penalty is not None:
        request["frequency_penalty"] = frequency_penalty
    if stop:
        request["stop"] = stop
        request["include_stop_str_in_output"] = True
    if truncate is not None:  # TGI keeps the last `truncate` tokens of the input
        request.update(truncate_prompt_tokens=truncate, truncation_side="left")
    if decoder_input_details:
        request["prompt_logprobs"] = 0
    if stream:
        request["stream_options"] = {"include_usage": True}
    return request, GenerateRequest(
        inputs=inputs,
        stream=stream,
        details=bool(parameters.get("details")) or decoder_input_details,
        decoder_input_details=decoder_input_details,
        return_full_text=bool(parameters.get("return_full_text")),
        seed=seed if sampling else None,
        compat=compat,
    )


def finish_reason(choice: dict) -> str:
    """vLLM's finish_reason and stop_reason as TGI's: a stop string is stop_sequence; the end-of-sequence token
    or another stop token id (vLLM reports the model's extra EOS ids as stop_reason) is eos_token."""
    if choice.get("finish_reason") == "stop":
        return "stop_sequence" if isinstance(choice.get("stop_reason"), str) else "eos_token"
    return "length"  # length, and an aborted request: cut short either way


def _token(token_id: int | None, text: str, logprob, special: bool = False) -> dict:
    return {
        "id": UNKNOWN_ID if token_id is None else token_id,
        "text": text,
        "logprob": logprob,
        "special": special,
    }


def _tokens(choice: dict, *, split_text: bool) -> list[dict]:
    """The generated tokens of a choice (a whole answer or one stream chunk) as TGI token objects.

    With `split_text` each token carries its own text from the log-probabilities when the server gave one per
    token; otherwise (and in a stream, so that the texts add up exactly to the generated text) the choice's text
    goes on its last token and the others carry "" (as TGI's tokens do while a character is incomplete). A choice
    that ends on the end-of-sequence (or another stop) token reports that token too: it is the special one, and
    its text is not in the choice's text."""
    ids = choice.get("token_ids") or []
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs") or []
    texts = logprobs.get("tokens") or []
    text = choice.get("text") or ""
    count = len(ids) or len(values) or (1 if text else 0)
    # A server that reports no ids (or a single token that carries text) did not report the stop token apart.
    special = bool(ids) and finish_reason(choice) == "eos_token" and choice.get("finish_reason") is not None
    special = special and (count >= 2 or not text)
    carrier = count - 2 if special else count - 1
    own_texts = split_text and len(texts) == count
    tokens = []
    for i in range(count):
        piece = texts[i] if own_texts else (text if i == carrier else "")
        token_id = ids[i] if i < len(ids) else None
        tokens.append(_token(token_id, piece, values[i] if i < len(values) else None, special and i == count - 1))
    return tokens


def _prefill(choice: dict) -> list[dict]:
    """decoder_input_details from vLLM's prompt_logprobs (the first prompt token has no log-probability)."""
    ids = choice.get("prompt_token_ids") or []
    entries = choice.get("prompt_logprobs") or []
    prefill = []
    for i in range(max(len(ids), len(entries))):
        entry = entries[i] if i < len(entries) and isinstance(entries[i], dict) else {}
        token_id = ids[i] if i < len(ids) else (int(next(iter(entry))) if len(entry) == 1 else None)
        chosen = (entry.get(str(token_id)) or {}) if token_id is not None else {}
        prefill.append(
            {
                "id": UNKNOWN_ID if token_id is None else token_id,
                "text": chosen.get("decoded_token") or "",
                "logprob": chosen.get("logprob"),
            }
        )
    return prefill


def generate_answer(data: dict, request: GenerateRequest) -> dict | list:
    """A vLLM completion as TGI's /generate answer ({"generated_text", "details"}; a list of it for POST /)."""
    choice = (data.get("choices") or [{}])[0]
    usage = data.get("usage") or {}
    text = choice.get("text") or ""
    answer: dict = {"generated_text": request.inputs + text if request.return_full_text else text}
    if request.details:
        tokens = _tokens(choice, split_text=True)
        answer["details"] = {
            "finish_reason": finish_reason(choice),
            "generated_tokens": usage.get("completion_tokens") or len(tokens),
            "seed": request.seed,
            "prefill": _prefill(choice) if request.decoder_input_details else [],
            "tokens": tokens,
        }
    return [answer] if request.compat else answer


def error_type(status: int) -> str:
    """TGI's error_type for a status the server answered with (the text-generation client raises by it)."""
    if status in (400, 413, 422):
        return "validation"
    if status == 404:
        return "not_found"
    if status in (429, 503):
        return "overloaded"
    return "generation"


def _error_message(data) -> str:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):  # vLLM >= 0.10: {"error": {"message", "type", "code"}}
            return str(error.get("message") or error)
        if error is not None:
            return str(error)
        if "message" in data:  # older vLLM: {"object": "error", "message", "type", "code"}
            return str(data["message"])
    return ""


def error_answer(status: int, payload: bytes) -> dict:
    """The server's refusal (any OpenAI-style error body, or none) as TGI's {"error", "error_type"}."""
    try:
        message = _error_message(json.loads(payload))
    except (ValueError, UnicodeDecodeError):
        message = ""
    if not message:
        message = payload[:300].decode("utf-8", errors="replace") or f"the server answered {status}"
    return {"error": message, "error_type": error_type(status)}


def _event(payload: dict) -> bytes:
    return b"data:" + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class GenerateStream:
    """vLLM's completion event stream read as it arrives, written as TGI's generate_stream events: one event per
    token ({"index", "token", "generated_text": null, "details": null}); the last token's event carries the whole
    generated text and the details. The last event is held back until the usage chunk (or the end) so that it
    can carry the server's token count. A stream cut before it finished ends with an incomplete_generation error;
    one that sent nothing at all yields nothing, so the gateway may try another server."""

    request: GenerateRequest
    _buffer: bytes = b""
    _pending: dict | None = None
    _texts: list[str] = field(default_factory=list)
    _count: int = 0
    _finish: str | None = None
    _usage: dict = field(default_factory=dict)
    _over: bool = False
    _seen: bool = False

    def feed(self, data: bytes) -> bytes:
        """The TGI events that the bytes read so far complete (b"" while an event is still partial)."""
        if self._over:
            return b""
        self._buffer += data
        if b"\n\n" not in self._buffer:
            return b""
        *events, self._buffer = self._buffer.split(b"\n\n")
        out = []
        for event in events:
            out += self._one(event)
            if self._over:
                break
        return b"".join(out)

    def close(self) -> bytes:
        """At the end of the server's body: the held-back last event, or the reason the stream is incomplete."""
        if self._over:
            return b""
        tail = self._one(self._buffer) if self._buffer.strip() else []
        if self._over:
            return b"".join(tail)
        if not self._seen:
            return b""
        self._over = True
        if self._finish is None:
            out = [_event(self._pending)] if self._pending is not None else []
            message = "the server ended the stream before the generation finished"
            return b"".join([*tail, *out, _event({"error": message, "error_type": "incomplete_generation"})])
        return b"".join([*tail, self._final()])

    @property
    def completion_tokens(self) -> int:
        return self._usage.get("completion_tokens") or self._count

    def _one(self, event: bytes) -> list[bytes]:
        at = event.find(b"data:")
        if at < 0:
            return []
        payload = event[at + 5 :].strip()
        if not payload:
            return []
        if payload == b"[DONE]":
            self._over = self._finish is not None or self._over
            return [self._final()] if self._finish is not None else []
        try:
            data = json.loads(payload)
        except ValueError:
            return []
        if not isinstance(data, dict):
            return []
        self._seen = True
        if "error" in data or data.get("object") == "error":
            out = [_event(self._pending)] if self._pending is not None else []
            self._pending, self._over = None, True
            code = (data.get("error") or {}).get("code") if isinstance(data.get("error"), dict) else data.get("code")
            kind = error_type(code) if isinstance(code, int) else "generation"
            return [*out, _event({"error": _error_message(data) or "the server failed", "error_type": kind})]
        out = []
        for choice in data.get("choices") or []:
            out += self._choice(choice)
        if isinstance(data.get("usage"), dict) and data["usage"]:
            self._usage = data["usage"]
            if self._finish is not None:
                self._over = True
                out.append(self._final())
        return out

    def _choice(self, choice: dict) -> list[bytes]:
        out = []
        for token in _tokens(choice, split_text=False):
            self._count += 1
            self._texts.append(token["text"])
            if self._pending is not None:
                out.append(_event(self._pending))
            self._pending = {"index": 0, "token": token, "generated_text": None, "details": None}
        if choice.get("finish_reason") is not None:
            self._finish = finish_reason(choice)
        return out

    def _final(self) -> bytes:
        final = self._pending or {"index": 0, "token": _token(None, "", None, special=True)}
        self._pending = None
        text = "".join(self._texts)
        final["generated_text"] = self.request.inputs + text if self.request.return_full_text else text
        details = {"finish_reason": self._finish, "generated_tokens": self.completion_tokens, "seed": self.request.seed}
        if self._usage.get("prompt_tokens"):
            details["input_length"] = self._usage["prompt_tokens"]
        final["details"] = details
        return _event(final)


async def translated_stream(stream: GenerateStream, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The server's body chunks as TGI event bytes (nothing yielded for chunks that complete no event)."""
    async for chunk in chunks:
        out = stream.feed(chunk)
        if out:
            yield out
    tail = stream.close()
    if tail:
        yield tail
