"""TGI's generate protocol translated to and from vLLM's /v1/completions (deployments/gateway/tgi_translate.py):
the request a text-generation client sends, the answers and events the client parses back (read with the
client's own pydantic types, so a shape it cannot read fails here), and the errors it raises by."""

from __future__ import annotations

import json

import pytest
from text_generation.errors import IncompleteGenerationError, ValidationError, parse_error
from text_generation.types import Parameters, Request, Response, StreamResponse

from deployments.gateway import tgi_translate as t

EOS = 2


def _client_body(stream: bool = False, **parameters) -> dict:
    """The body text-generation 0.7.0 posts (it always asks for details)."""
    return Request(inputs="the model", stream=stream, parameters=Parameters(details=True, **parameters)).model_dump()


def _chunk(text: str, ids: list[int], logprobs: list[float] | None = None, finish=None, stop_reason=None) -> bytes:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": stop_reason}
    choice["token_ids"] = ids
    if logprobs is not None:
        choice["logprobs"] = {
            "text_offset": [0] * len(ids),
            "token_logprobs": logprobs,
            "tokens": [text] * len(ids),
            "top_logprobs": [],
        }
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "tiny", "choices": [choice]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = (
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny","choices":[],'
    b'"usage":{"prompt_tokens":3,"total_tokens":8,"completion_tokens":5}}\n\n'
)
DONE = b"data: [DONE]\n\n"


def _events(raw: bytes) -> list[dict]:
    return [json.loads(line[len(b"data:") :]) for line in raw.split(b"\n\n") if line.startswith(b"data:")]


def _feed(stream: t.GenerateStream, raw: bytes, step: int) -> bytes:
    """The bytes as a network delivers them: cut anywhere, even inside an event or a UTF-8 sequence."""
    return b"".join(stream.feed(raw[i : i + step]) for i in range(0, len(raw), step)) + stream.close()


# -- the request ------------------------------------------------------------------------------------------------
def test_the_clients_greedy_request_becomes_a_greedy_completion_for_the_served_model():
    body, request = t.completion_request(_client_body(max_new_tokens=8), model="tiny-served", stream=False)
    assert body["model"] == "tiny-served" and body["prompt"] == "the model" and body["max_tokens"] == 8
    assert body["temperature"] == 0.0 and "top_p" not in body and "seed" not in body
    assert body["return_token_ids"] is True and body["logprobs"] == 0  # details need ids and log-probabilities
    assert request.details and request.seed is None and not request.stream


def test_sampling_parameters_pass_and_a_warper_alone_samples_as_in_tgi():
    body, request = t.completion_request(
        _client_body(do_sample=True, temperature=0.7, top_p=0.9, top_k=20, seed=7, repetition_penalty=1.1),
        model="m",
        stream=False,
    )
    assert (body["temperature"], body["top_p"], body["top_k"], body["seed"]) == (0.7, 0.9, 20, 7)
    assert body["repetition_penalty"] == 1.1 and request.seed == 7
    # TGI samples when a warper is set even with do_sample false; vLLM needs a temperature other than 0 for that.
    warped, _ = t.completion_request({"inputs": "x", "parameters": {"top_k": 5}}, model="m", stream=False)
    assert warped["temperature"] == 1.0 and warped["top_k"] == 5


def test_stop_truncate_decoder_input_details_and_stream_options():
    body, request = t.completion_request(
        _client_body(stop=["\n\n"], truncate=100, decoder_input_details=True), model="m", stream=False
    )
    assert body["stop"] == ["\n\n"] and body["include_stop_str_in_output"] is True  # TGI keeps the stop text
    assert (body["truncate_prompt_tokens"], body["truncation_side"]) == (100, "left")  # TGI keeps the input's end
    assert body["prompt_logprobs"] == 0 and request.decoder_input_details
    streamed, request = t.completion_request(_client_body(stream=True), model="m", stream=True)
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}
    assert streamed["logprobs"] == 0 and request.stream
    # No max_new_tokens: up to the end of the context as TGI does (vLLM's own default would be 16 tokens).
    bare, _ = t.completion_request({"inputs": "x"}, model="m", stream=False)
    assert bare["max_tokens"] is None and "logprobs" not in bare


@pytest.mark.parametrize(
    ("parameters", "stream", "named"),
    [
        ({"temperature": 0}, False, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, False, "`top_p` must be > 0.0 and < 1.0"),
        ({"max_new_tokens": "8"}, False, "`max_new_tokens` must be an integer"),
        ({"typical_p": 0.5}, False, "`typical_p` is not offered"),
        ({"watermark": True}, False, "`watermark` is not offered"),
        ({"top_n_tokens": 3}, False, "`top_n_tokens` is not offered"),
        ({"grammar": {"type": "json", "value": {}}}, False, "`grammar (use /v1/completions"),
        ({"best_of": 2, "do_sample": True}, False, "`best_of` > 1 is not offered"),
        ({"decoder_input_details": True}, True, "not supported when streaming"),
        ({"stop": [1]}, False, "`stop` must be a list of strings"),
    ],
)
def test_what_cannot_be_translated_is_refused_by_name(parameters, stream, named):
    with pytest.raises(t.TranslationError) as refused:
        t.completion_request({"inputs": "x", "parameters": parameters}, model="m", stream=stream)
    assert named in refused.value.message


def test_empty_inputs_are_refused_as_tgi_does():
    with pytest.raises(t.TranslationError, match="`inputs` cannot be empty"):
        t.completion_request({"inputs": ""}, model="m", stream=False)


# -- the answer -------------------------------------------------------------------------------------------------
COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1,
    "model": "tiny",
    "choices": [
        {
            "index": 0,
            "text": " server is",
            "logprobs": {
                "text_offset": [0, 7, 10],
                "token_logprobs": [-0.25, -1.5, -0.125],
                "tokens": [" server", " is", "</s>"],
                "top_logprobs": [{" server": -0.25}, {" is": -1.5}, {"</s>": -0.125}],
            },
            "finish_reason": "stop",
            "stop_reason": None,
            "token_ids": [4, 5, EOS],
            "prompt_token_ids": [1, 9, 10],
            "prompt_logprobs": [None, {"9": {"logprob": -3.0, "rank": 1, "decoded_token": " the"}}, {"10": {}}],
        }
    ],
    "usage": {"prompt_tokens": 3, "total_tokens": 6, "completion_tokens": 3},
}


def test_a_completion_reads_as_the_clients_response_with_details():
    _, request = t.completion_request(_client_body(max_new_tokens=8), model="m", stream=False)
    answer = Response(**t.generate_answer(COMPLETION, request))
    assert answer.generated_text == " server is"
    assert answer.details.finish_reason.value == "eos_token" and answer.details.generated_tokens == 3
    assert [(x.id, x.text, x.logprob, x.special) for x in answer.details.tokens] == [
        (4, " server", -0.25, False),
        (5, " is", -1.5, False),
        (EOS, "</s>", -0.125, True),
    ]
    assert answer.details.prefill == [] and answer.details.seed is None


def test_compat_route_full_text_and_decoder_input_details():
    _, request = t.completion_request(
        {"inputs": "the model", "parameters": {"return_full_text": True, "decoder_input_details": True}},
        model="m",
        stream=False,
        compat=True,
    )
    [answer] = t.generate_answer(COMPLETION, request)  # POST / answers a list, as TGI and the client expect
    assert Response(**answer).generated_text == "the model server is"
    assert answer["details"]["prefill"] == [
        {"id": 1, "text": "", "logprob": None},
        {"id": 9, "text": " the", "logprob": -3.0},
        {"id": 10, "text": "", "logprob": None},
    ]
    _, request = t.completion_request({"inputs": "x"}, model="m", stream=False)
    assert t.generate_answer(COMPLETION, request) == {"generated_text": " server is"}  # no details unless asked


@pytest.mark.parametrize(
    ("finish", "stop_reason", "tgi"),
    [
        ("length", None, "length"),
        ("stop", None, "eos_token"),
        ("stop", "\n\n", "stop_sequence"),
        ("stop", 7, "eos_token"),
    ],
)
def test_finish_reasons(finish, stop_reason, tgi):
    assert t.finish_reason({"finish_reason": finish, "stop_reason": stop_reason}) == tgi


def test_a_server_without_token_ids_still_gives_a_readable_answer():
    choice = {"index": 0, "text": "abc", "finish_reason": "length", "logprobs": None}
    _, request = t.completion_request(_client_body(), model="m", stream=False)
    answer = Response(**t.generate_answer({"choices": [choice], "usage": {"completion_tokens": 3}}, request))
    assert answer.generated_text == "abc" and answer.details.generated_tokens == 3
    assert [(x.id, x.text, x.special) for x in answer.details.tokens] == [(t.UNKNOWN_ID, "abc", False)]


# -- the stream -------------------------------------------------------------------------------------------------
STREAM = (
    _chunk(" server", [4], [-0.25])
    + _chunk(" is", [5], [-1.5])
    + _chunk(" r\u00e9", [6, 7], [-0.5, -0.75])  # two tokens in one step: a character completed by the second
    + _chunk(" ok", [8, EOS], [-0.1, -0.01], finish="stop")  # the last text token and the EOS token together
    + USAGE
    + DONE
)


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_a_completion_stream_reads_as_the_clients_stream_one_event_per_token(step):
    _, request = t.completion_request(_client_body(stream=True), model="m", stream=True)
    raw = _feed(t.GenerateStream(request), STREAM, step)
    events = [StreamResponse(**event) for event in _events(raw)]
    assert [e.token.id for e in events] == [4, 5, 6, 7, 8, EOS]
    assert [e.token.text for e in events] == [" server", " is", "", " r\u00e9", " ok", ""]
    assert [e.token.special for e in events] == [False] * 5 + [True]
    assert [e.token.logprob for e in events] == [-0.25, -1.5, -0.5, -0.75, -0.1, -0.01]
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    last = events[-1]
    assert (
        last.generated_text == "".join(e.token.text for e in events if not e.token.special) == " server is r\u00e9 ok"
    )
    assert last.details.finish_reason.value == "eos_token" and last.details.generated_tokens == 5  # the usage's
    assert _events(raw)[-1]["details"]["input_length"] == 3


def test_a_stream_that_stops_on_a_stop_sequence_keeps_its_text_on_the_last_token():
    _, request = t.completion_request(_client_body(stream=True, stop=["."]), model="m", stream=True)
    raw = _feed(
        t.GenerateStream(request), _chunk("a", [3]) + _chunk(".", [4], finish="stop", stop_reason=".") + DONE, 5
    )
    events = [StreamResponse(**event) for event in _events(raw)]
    assert [(e.token.text, e.token.special) for e in events] == [("a", False), (".", False)]
    assert events[-1].generated_text == "a." and events[-1].details.finish_reason.value == "stop_sequence"
    assert events[-1].details.generated_tokens == 2  # counted, as the server sent no usage


def test_a_stream_cut_short_ends_with_incomplete_generation_and_an_empty_one_with_nothing():
    _, request = t.completion_request(_client_body(stream=True), model="m", stream=True)
    raw = _feed(t.GenerateStream(request), _chunk("a", [3]) + _chunk("b", [4]), 3)
    events = _events(raw)
    assert [e["token"]["text"] for e in events[:-1]] == ["a", "b"]
    with pytest.raises(IncompleteGenerationError):
        raise parse_error(200, events[-1])
    # Nothing at all: nothing is written, so the gateway may still give the call to another server.
    assert t.GenerateStream(request).close() == b""


@pytest.mark.parametrize(
    "error",
    [
        b'data: {"error": {"message": "out of blocks", "type": "InternalServerError", "code": 500}}\n\n',
        b'data: {"object": "error", "message": "out of blocks", "type": "InternalServerError", "code": 500}\n\n',
    ],
)
def test_an_error_inside_the_stream_becomes_tgis_error_event(error):
    _, request = t.completion_request(_client_body(stream=True), model="m", stream=True)
    raw = _feed(t.GenerateStream(request), _chunk("a", [3]) + error + DONE, 11)
    events = _events(raw)
    assert events[0]["token"]["text"] == "a" and events[-1] == {"error": "out of blocks", "error_type": "generation"}
    assert len(events) == 2


# -- errors -----------------------------------------------------------------------------------------------------
def test_the_servers_refusals_become_tgi_errors_the_client_raises_by_type():
    new = json.dumps({"error": {"message": "max_tokens is too large", "type": "BadRequestError", "code": 400}})
    answer = t.error_answer(400, new.encode())
    assert answer == {"error": "max_tokens is too large", "error_type": "validation"}
    assert isinstance(parse_error(400, answer), ValidationError)
    old = json.dumps({"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError"})
    assert t.error_answer(404, old.encode()) == {"error": "The model `x` does not exist.", "error_type": "not_found"}
    assert t.error_answer(429, b"slow down") == {"error": "slow down", "error_type": "overloaded"}
    assert t.error_answer(418, b"") == {"error": "the server answered 418", "error_type": "generation"}
