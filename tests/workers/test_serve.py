"""serve.py, the TGI-compatible server, as a real subprocess on a tiny random Llama, driven by the real
text-generation 0.7.0 client (Client and AsyncClient) and by plain HTTP for the OpenAI routes."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

import pytest
import requests
from text_generation import AsyncClient, Client
from text_generation import errors as tgi_errors

from deployments.backends import get_backend
from deployments.backends.tgi.diagnosis import diagnose
from tests.conftest import need
from tests.support.aio import run_async
from tests.support.serve_process import ROOT, ServeProcess, make_model, ml_python

LIMITS = ("--max-concurrent-requests", "3", "--max-input-tokens", "200", "--max-total-tokens", "256")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run serve.py")
    return make_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def server(tiny_model):
    process = ServeProcess(tiny_model, *LIMITS).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def test_startup_prints_tgi_lines_and_listens_only_when_ready(server):
    order = [
        "Starting check and download process for",
        "Files are already present on the host",
        "Starting shard rank=0",
        "This is not Text Generation Inference",  # says plainly what it is (issue 13 item 5)
        "Shard ready in",
        "Warming up model",
        "Setting max batch total tokens to",
        "Connected",
    ]
    positions = [next(i for i, line in enumerate(server.lines) if marker in line) for marker in order]
    assert positions == sorted(positions)
    assert server.refused_before_ready, "the port must be closed while the model loads (as TGI)"
    assert not any("text_generation_" in line or "backend V3" in line for line in server.lines)  # TGI's names
    info = requests.get(f"{server.url}/info", timeout=5).json()
    assert info["served_by"] == "workers.jobs.serve" and info["router"] != "text-generation-router"
    assert info["max_input_tokens"] == 200 and info["max_total_tokens"] == 256
    assert info["max_concurrent_requests"] == 3 and info["model_id"].endswith("tiny")
    assert requests.get(f"{server.url}/health", timeout=5).content == b""


def test_generate_with_details_through_the_client(server):
    response = Client(server.url, timeout=60).generate("hello model server", max_new_tokens=12)
    details = response.details
    assert details.generated_tokens == len(details.tokens) <= 12
    assert details.finish_reason.value in ("length", "eos_token")
    assert response.generated_text
    assert all(token.logprob is not None and token.logprob <= 0 for token in details.tokens)


def test_stream_final_event_carries_text_and_details(server):
    events = list(Client(server.url, timeout=60).generate_stream("the quick brown fox", max_new_tokens=10))
    assert all(event.generated_text is None and event.details is None for event in events[:-1])
    last = events[-1]
    assert last.details.generated_tokens == len(events)
    assert last.details.finish_reason.value in ("length", "eos_token")
    streamed = "".join(event.token.text for event in events if not event.token.special)
    assert last.generated_text == streamed
    same = Client(server.url, timeout=60).generate("the quick brown fox", max_new_tokens=10)
    assert same.generated_text == last.generated_text  # greedy: stream and non-stream agree


def test_async_client_generate_and_stream(server):
    async def run():
        client = AsyncClient(server.url, timeout=60)
        response = await client.generate("my name is", max_new_tokens=6)
        events = [event async for event in client.generate_stream("my name is", max_new_tokens=6)]
        return response, events

    response, events = run_async(run())
    assert events[-1].generated_text == response.generated_text
    assert [e.token.id for e in events] == [t.id for t in response.details.tokens]


def test_same_seed_same_text_other_seed_other_text(server):
    client = Client(server.url, timeout=60)

    def sample(seed: int) -> str:
        return client.generate(
            "deploy the model", do_sample=True, temperature=1.5, seed=seed, max_new_tokens=16
        ).generated_text

    first, again = sample(42), sample(42)
    assert first == again
    assert any(sample(seed) != first for seed in (1, 2, 3))
    assert client.generate("deploy the model", do_sample=True, seed=42, max_new_tokens=4).details.seed == 42


def test_sampling_parameters_are_honoured(server):
    client = Client(server.url, timeout=60)
    # top_k=1 is greedy whatever the temperature
    greedy = client.generate("audit the console", max_new_tokens=8).generated_text
    assert (
        client.generate(
            "audit the console", do_sample=True, top_k=1, temperature=3.0, seed=7, max_new_tokens=8
        ).generated_text
        == greedy
    )
    # a stop sequence taken from the greedy text ends generation there
    full = client.generate("audit the console", max_new_tokens=20)
    stop = full.details.tokens[3].text
    stopped = client.generate("audit the console", max_new_tokens=20, stop_sequences=[stop])
    assert stopped.details.finish_reason.value == "stop_sequence"
    assert stopped.generated_text.endswith(stop) and len(stopped.details.tokens) <= 4
    # a strong repetition penalty changes greedy output that repeats itself
    repeated = [t.id for t in full.details.tokens]
    if len(set(repeated)) < len(repeated):
        penalised = client.generate("audit the console", max_new_tokens=20, repetition_penalty=50.0)
        assert [t.id for t in penalised.details.tokens] != repeated


def test_top_n_tokens_and_prefill_details(server):
    body = {
        "inputs": "hello world",
        "parameters": {"max_new_tokens": 3, "details": True, "top_n_tokens": 3, "decoder_input_details": True},
    }
    details = requests.post(f"{server.url}/generate", json=body, timeout=30).json()["details"]
    assert len(details["top_tokens"]) == 3 and all(len(top) == 3 for top in details["top_tokens"])
    assert details["tokens"][0]["id"] == details["top_tokens"][0][0]["id"]  # greedy picks the top token
    assert details["prefill"][0]["logprob"] is None and details["prefill"][1]["logprob"] < 0


def test_compat_route_returns_a_list_and_full_text_by_default(server):
    body = {"inputs": "hello model", "parameters": {"max_new_tokens": 3, "do_sample": False}}
    answer = requests.post(server.url, json=body, timeout=30).json()
    assert isinstance(answer, list) and answer[0]["generated_text"].startswith("hello model")
    assert "details" not in answer[0]
    body["parameters"]["return_full_text"] = False
    assert not requests.post(server.url, json=body, timeout=30).json()[0]["generated_text"].startswith("hello model")


def test_best_of_returns_the_other_sequences(server):
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 4, "best_of": 2, "do_sample": True, "details": True}}
    details = requests.post(f"{server.url}/generate", json=body, timeout=30).json()["details"]
    assert len(details["best_of_sequences"]) == 1


def test_validation_errors_reach_the_client_as_validation_error(server):
    client = Client(server.url, timeout=30)
    with pytest.raises(tgi_errors.ValidationError, match="must be <= 256"):
        client.generate("hello", max_new_tokens=300)
    with pytest.raises(tgi_errors.ValidationError, match="must have less than 200 tokens"):
        client.generate("hello " * 400, max_new_tokens=1)
    with pytest.raises(tgi_errors.ValidationError, match="must be <= 256"):
        list(client.generate_stream("hello", max_new_tokens=300))
    raw = requests.post(f"{server.url}/generate", json={"inputs": "", "parameters": {}}, timeout=10)
    assert raw.status_code == 422
    assert raw.json() == {"error": "Input validation error: `inputs` cannot be empty", "error_type": "validation"}
    bad = requests.post(f"{server.url}/generate", data=b"{not json", timeout=10)
    assert bad.status_code == 400 and "JSON" in bad.text
    missing = requests.post(f"{server.url}/generate_stream", json={"parameters": {}}, timeout=10)
    assert missing.status_code == 422 and "missing field `inputs`" in missing.text


def test_overload_above_max_concurrent_requests(server):
    async def run():
        client = AsyncClient(server.url, timeout=120)
        started = asyncio.Event()
        holding = 0

        async def hold():
            nonlocal holding
            async for _ in client.generate_stream("hold the line", max_new_tokens=200):
                holding += 1
                if holding >= 6:
                    started.set()

        holders = [asyncio.create_task(hold()) for _ in range(3)]
        await asyncio.wait_for(started.wait(), 60)
        with pytest.raises(tgi_errors.OverloadedError, match="Model is overloaded"):
            await client.generate("one more", max_new_tokens=2)
        with pytest.raises(tgi_errors.OverloadedError):
            [event async for event in client.generate_stream("one more", max_new_tokens=2)]
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)

    run_async(run())
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'tgi_request_failure{err="overloaded"}' in metrics


def test_concurrent_streams_stay_separate_and_are_batched(server):
    prompts = [("bank", 20), ("hospital data", 9), ("factory weights are", 15), ("mine", 4), ("gpu", 12)]
    client = Client(server.url, timeout=60)
    alone = {prompt: [t.id for t in client.generate(prompt, max_new_tokens=n).details.tokens] for prompt, n in prompts}
    before = _counter(server, 'tgi_batch_inference_count{method="decode"}')

    async def run():
        client = AsyncClient(server.url, timeout=120)

        async def stream(prompt: str, n: int):
            return prompt, [event async for event in client.generate_stream(prompt, max_new_tokens=n)]

        return await asyncio.gather(*(stream(p, n) for p, n in prompts[:3])), await asyncio.gather(
            *(stream(p, n) for p, n in prompts[3:])
        )

    first, second = run_async(run())
    for prompt, events in [*first, *second]:
        assert [e.token.id for e in events] == alone[prompt], prompt
        assert [e.token.id for e in events][: len(events)] and events[-1].details.generated_tokens == len(events)
    decode_steps = _counter(server, 'tgi_batch_inference_count{method="decode"}') - before
    generated = sum(len(events) for _, events in [*first, *second])
    assert decode_steps < generated - 8, "concurrent requests must share decode steps (batching)"


def _counter(server, name: str) -> float:
    for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _sse(response: requests.Response) -> list[str]:
    return [line[len("data:") :] for line in response.iter_lines(decode_unicode=True) if line.startswith("data:")]


def test_openai_chat_streaming_over_http(server):
    body = {
        "model": "tgi",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
        "stream": True,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    with requests.post(f"{server.url}/v1/chat/completions", json=body, stream=True, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = _sse(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    tokens, usage = chunks[:-1], chunks[-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert tokens[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in tokens[:-1])
    assert tokens[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(tokens)
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in tokens)
    # non-streaming chat through the 0.7.0 client (its stream=True is broken against TGI)
    complete = Client(server.url, timeout=60).chat([{"role": "user", "content": "hello"}], max_tokens=8, temperature=0)
    assert complete.choices[0].message.content == text


def test_openai_completions_and_tokenize_and_models(server):
    answer = requests.post(
        f"{server.url}/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 3, "temperature": 0}, timeout=30
    ).json()
    assert [choice["index"] for choice in answer["choices"]] == [0, 1]
    tokens = requests.post(f"{server.url}/tokenize", json={"inputs": "hello model"}, timeout=10).json()
    assert tokens[0]["text"] == "" and "".join(t["text"] for t in tokens) == "hello model"
    models = requests.get(f"{server.url}/v1/models", timeout=10).json()
    assert models["data"][0]["id"].endswith("tiny")
    template = requests.post(
        f"{server.url}/chat_tokenize", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10
    ).json()
    assert "<|user|>" in template["templated_text"] and template["templated_text"].endswith("<|assistant|>\n")


def test_metrics_use_tgi_names(server):
    Client(server.url, timeout=30).generate("metrics please", max_new_tokens=2)
    # A refused request, so tgi_request_failure exists (a series appears once touched, as in TGI) whatever ran before.
    refused = requests.post(
        f"{server.url}/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 0}}, timeout=10
    )
    assert refused.status_code == 422
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    for name in (
        "tgi_request_count ",
        "tgi_request_success ",
        "tgi_request_duration_bucket{le=",
        "tgi_request_generated_tokens_count ",
        "tgi_request_input_length_sum ",
        "tgi_queue_size ",
        "tgi_batch_current_size ",
        'tgi_batch_inference_duration_count{method="prefill"}',
    ):
        assert name in text, name
    assert "_total" not in text
    # The TGI backend's metric names (what the console scrapes) are all in what serve.py exports.
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    exported = {name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name in samples} | samples
    assert set(get_backend("tgi").metric_names) <= exported


def test_generation_error_mid_stream_and_health_recovers(tiny_model):
    process = ServeProcess(tiny_model, env={"SERVE_FAULT_AT_TOKEN": "4"}).start()
    try:
        process.wait_ready()
        received = []
        with pytest.raises(tgi_errors.GenerationError, match="Request failed during generation"):
            for event in Client(process.url, timeout=30).generate_stream("break", max_new_tokens=10):
                received.append(event)
        assert len(received) == 3  # the tokens before the fault arrived first
        with pytest.raises(tgi_errors.GenerationError):
            Client(process.url, timeout=30).generate("break", max_new_tokens=10)
        # /health runs a one-token generation after an error (it succeeds: the fault is at token 4)
        assert requests.get(f"{process.url}/health", timeout=30).status_code == 200
        assert 'tgi_request_failure{err="generation"} 2' in requests.get(f"{process.url}/metrics", timeout=5).text
    finally:
        process.stop()


def test_api_key_and_payload_limit(tiny_model):
    process = ServeProcess(tiny_model, "--api-key", "s3cret", "--payload-limit", "2000").start()
    try:
        process.wait_ready()
        denied = requests.post(f"{process.url}/generate", json={"inputs": "x"}, timeout=10)
        assert denied.status_code == 401 and denied.content == b""
        allowed = Client(process.url, headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert allowed.generate("x", max_new_tokens=1).details.generated_tokens == 1
        big = requests.post(
            f"{process.url}/generate",
            json={"inputs": "x" * 5000},
            headers={"Authorization": "Bearer s3cret"},
            timeout=10,
        )
        assert big.status_code == 413
        assert "s3cret" not in process.output  # the key is not logged
        assert requests.get(f"{process.url}/health", timeout=5).status_code == 200  # health needs no key
    finally:
        process.stop()


def test_graceful_stop_on_sigterm(tiny_model):
    process = ServeProcess(tiny_model).start()
    process.wait_ready()
    assert process.stop() == 0
    assert "signal received, starting graceful shutdown" in process.output


def test_refuses_a_directory_that_is_not_a_model(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    process = ServeProcess(tmp_path / "empty").start()
    assert process.wait_exit() == 1
    assert "is not a model directory: config.json is missing" in process.output
    assert process.output.rstrip().endswith("Error: DownloadError")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_model / "config.json").read_text())
    process = ServeProcess(no_weights).start()
    assert process.wait_exit() == 1
    assert f"No local weights found in {no_weights} with extension .safetensors" in process.output
    assert diagnose(process.lines).cause == "not_found"


def test_refuses_when_memory_is_insufficient(tiny_model):
    process = ServeProcess(tiny_model, "--cuda-memory-fraction", "0.0000001").start()
    assert process.wait_exit() == 1
    assert "Not enough memory to load the model" in process.output
    assert "Error: ShardCannotStart" in process.output
    assert diagnose(process.lines).cause == "cuda_oom"


def test_argument_validation_like_the_launcher(tiny_model):
    process = ServeProcess(tiny_model, "--max-input-tokens", "300", "--max-total-tokens", "300").start()
    assert process.wait_exit() == 1
    assert "`max_input_tokens`(300) must be < `max_total_tokens`(300)" in process.output
    assert diagnose(process.lines).cause == "invalid_arguments"


def test_job_programs_import_nothing_from_django():
    forbidden = {"django", "console", "deployments", "audit", "rest_framework", "celery", "channels"}
    for path in (ROOT / "workers" / "jobs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
