"""vllm_serve.py, the vLLM-flavoured development server, as a real subprocess on the tiny model, started with
`vllm serve`'s own command line and driven by the official `openai` client: vLLM's startup lines, routes, API key,
errors, metrics, a LoRA adapter, and the refusals vLLM prints (unknown flag, not a model, memory, port, adapter)."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import openai
import pytest
import requests

from tests.conftest import need
from tests.support.serve_process import ROOT, make_model, ml_env, ml_python
from tests.support.vllm_process import VllmProcess, make_adapter
from workers.jobs import vllm_serve_args
from workers.jobs.vllm_flags import RELEASE

KEY = "sk-vllm-" + "4c1d9e7b2a"  # must appear nowhere in the server's output
CHAT = [{"role": "user", "content": "hello"}]
LINE = re.compile(r"^\((APIServer|EngineCore) pid=\d+\) (INFO|WARNING|ERROR) \d\d-\d\d \d\d:\d\d:\d\d \[[\w.]+:\d+\] ")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run vllm_serve.py")
    return make_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    return make_adapter(tiny_model, tmp_path_factory.mktemp("lora") / "mine")


@pytest.fixture(scope="module")
def server(tiny_model, adapter):
    process = VllmProcess(
        tiny_model,
        "--served-model-name", "tiny", "tiny-alias",
        "--max-model-len", "512",
        "--max-num-seqs", "8",
        "--enable-lora",
        "--lora-modules", f"mine={adapter}",
        "--disable-access-log-for-endpoints", "/health,/metrics,/version",
        env={"VLLM_API_KEY": KEY},
    ).start()  # fmt: skip
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, timeout=60, max_retries=0)


def _index(lines: list[str], text: str) -> int:
    return next(i for i, line in enumerate(lines) if text in line)


# -- the command line, in-process (vllm_serve imports nothing heavy before it serves) ---------------------------
def test_the_command_line_is_vllm_serves_with_or_without_serve():
    plain = vllm_serve_args.parse(["/models/tiny", "--max-model-len", "1k", "-tp", "2", "--enable-lora"])
    assert plain.model == "/models/tiny" and plain.max_model_len == 1000 and plain.tensor_parallel_size == 2
    assert plain.enable_lora is True and plain.port == 8000 and plain.gpu_memory_utilization is None
    same = vllm_serve_args.parse(["serve", "--model", "/models/tiny", "--max_model_len=1K", "--no-enable-lora"])
    assert same.model == "/models/tiny" and same.max_model_len == 1024 and same.enable_lora is False
    keys = vllm_serve_args.parse(["m", "--api-key", "a", "b", "--served-model-name", "x", "y"])
    assert keys.api_key == ["a", "b"] and keys.served_model_name == ["x", "y"]
    shown = vllm_serve_args.non_default(keys)
    assert shown["api_key"] == "***" and "'a'" not in str(shown) and shown["model_tag"] == "m"


def test_an_unknown_flag_is_refused_as_vllms_parser_refuses_it():
    need(ml_python() is not None, "the ML environment (make ml-env)")
    done = subprocess.run(
        [ml_python(), "-m", "workers.jobs.vllm_serve", "serve", "/models/tiny", "--max-total-tokens", "256"],
        env=ml_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "usage: vllm serve [model_tag] [options]",
        "vllm serve: error: unrecognized arguments: --max-total-tokens 256",
    ]
    bad_choice = subprocess.run(
        [ml_python(), "-m", "workers.jobs.vllm_serve", "/m", "--dtype", "fp4"],
        env=ml_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_choice.returncode == 2 and "argument --dtype: invalid choice: 'fp4'" in bad_choice.stderr


def test_the_vllm_shim_runs_the_stand_in():
    need(ml_python() is not None, "the ML environment (make ml-env)")
    shim = str(ROOT / "deploy" / "ml" / "vllm")
    env = ml_env({"ML_PYTHON": ml_python()})
    version = subprocess.run([shim, "--version"], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.strip() == RELEASE
    refused = subprocess.run([shim, "serve", "/m", "--bogus"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1].endswith("unrecognized arguments: --bogus")
    other = subprocess.run([shim, "bench"], env=env, capture_output=True, text=True, timeout=60)
    assert other.returncode == 2 and "only 'vllm serve'" in other.stderr


# -- a running server ----------------------------------------------------------------------------------------------
def test_startup_prints_vllms_lines_and_listens_only_when_ready(server, adapter):
    lines = server.lines
    order = [
        f"version {RELEASE}",  # vLLM's logo
        "This is not vLLM",
        "non-default args: {'model_tag':",
        "Resolved architecture: LlamaForCausalLM",
        "Using max model len 512",
        f"Initializing a V1 LLM engine (v{RELEASE}) with config:",
        "Loading weights took",
        "KV cache size:",
        "init engine (profile, create kv cache, warmup model) took",
        "Supported tasks: ['generate']",
        f"Loaded new LoRA adapter: name 'mine', path '{adapter}'",
        f"Starting vLLM server on http://127.0.0.1:{server.port}",
        "Available routes are:",
        "Route: /v1/chat/completions, Methods: POST",
        "INFO:     Started server process [",
        "INFO:     Application startup complete.",
    ]
    positions = [_index(lines, marker) for marker in order]
    assert positions == sorted(positions), positions
    assert all(LINE.match(line) for line in lines[: positions[-2]] if line.startswith("(")), "vLLM's line shape"
    assert LINE.match(lines[positions[3]]) and lines[positions[6]].startswith("(EngineCore pid=")
    assert server.refused_before_ready, "the port must refuse connections while the model loads (as vLLM)"
    assert KEY not in server.output


def test_health_version_and_no_tgi_routes(server):
    health = requests.get(f"{server.url}/health", timeout=5)  # no key: vLLM guards only /v1
    assert health.status_code == 200 and health.content == b""
    assert requests.get(f"{server.url}/version", timeout=5).json()["version"] == RELEASE
    for method, path in (("POST", "/generate"), ("POST", "/generate_stream"), ("GET", "/info")):
        answer = requests.request(method, f"{server.url}{path}", json={"inputs": "x"}, timeout=5)
        assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}, path


def test_the_api_key_guards_the_v1_routes(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        denied = requests.get(f"{server.url}/v1/models", headers=headers, timeout=5)
        assert denied.status_code == 401 and denied.json() == {"error": "Unauthorized"}
    refused = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        refused.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)


def test_models_lists_the_served_names_and_the_adapter(server, client, adapter):
    cards = {card.id: card for card in client.models.list().data}
    assert list(cards) == ["tiny", "tiny-alias", "mine"]
    base, lora = cards["tiny"].model_dump(), cards["mine"].model_dump()
    assert base["owned_by"] == "vllm" and base["max_model_len"] == 512 and base["parent"] is None
    assert lora["parent"] == "tiny" and lora["root"] == str(adapter) and lora["max_model_len"] is None


def test_chat_through_the_openai_client_streaming_and_not(client):
    complete = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0)
    choice = complete.choices[0]
    assert complete.id.startswith("chatcmpl-") and complete.object == "chat.completion"
    assert complete.model == "tiny" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and complete.usage.completion_tokens <= 8
    assert complete.usage.total_tokens == complete.usage.prompt_tokens + complete.usage.completion_tokens
    stream = client.chat.completions.create(
        model="tiny-alias",
        messages=CHAT,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and len({chunk.id for chunk in chunks}) == 1
    assert all(chunk.model == "tiny" for chunk in chunks)  # vLLM answers with the first served name
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == choice.message.content  # greedy: streamed and whole answers agree
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == complete.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason] == [choice.finish_reason]


def test_completions_through_the_openai_client_streaming_and_not(client):
    complete = client.completions.create(model="tiny", prompt="the model server", max_tokens=6, temperature=0)
    assert complete.id.startswith("cmpl-") and complete.object == "text_completion"
    streamed = list(
        client.completions.create(model="tiny", prompt="the model server", max_tokens=6, temperature=0, stream=True)
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == complete.choices[0].text
    assert streamed[-1].choices[0].finish_reason == complete.choices[0].finish_reason
    several = client.completions.create(model="tiny", prompt=["a", "b"], max_tokens=3, temperature=0, n=2)
    assert [c.index for c in several.choices] == [0, 1, 2, 3]


def test_a_stop_string_ends_the_answer_and_is_cut_off(client):
    full = client.completions.create(model="tiny", prompt="the quick brown", max_tokens=16, temperature=0)
    text = full.choices[0].text
    # a stop string from the greedy answer, at its first appearance there
    at, stop = next((k, text[k : k + 2]) for k in range(1, len(text) - 1) if text.find(text[k : k + 2]) == k)
    cut = client.completions.create(model="tiny", prompt="the quick brown", max_tokens=16, temperature=0, stop=stop)
    assert cut.choices[0].text == text[:at] and cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].model_extra["stop_reason"] == stop
    streamed = client.completions.create(
        model="tiny", prompt="the quick brown", max_tokens=16, temperature=0, stop=stop, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == text[:at]


def test_the_adapter_answers_when_named(client):
    base = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0)
    adapted = client.chat.completions.create(model="mine", messages=CHAT, max_tokens=8, temperature=0)
    again = client.chat.completions.create(model="mine", messages=CHAT, max_tokens=8, temperature=0)
    assert adapted.model == "mine"
    assert adapted.choices[0].message.content == again.choices[0].message.content
    assert adapted.choices[0].message.content != base.choices[0].message.content


def test_an_unknown_model_is_vllms_404(client, server):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4", messages=CHAT, max_tokens=2)
    assert missing.value.body == {
        "message": "The model `gpt-4` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    raw = requests.post(
        f"{server.url}/v1/completions",
        json={"model": "gpt-4", "prompt": "x"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert raw.status_code == 404 and raw.json()["error"]["type"] == "NotFoundError"


def test_bad_requests_get_vllms_400(client):
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny", prompt="x", max_tokens=5000)
    assert too_long.value.body["message"] == (
        "max_tokens=5000 cannot be greater than max_model_len=512. Please request fewer output tokens."
    )
    assert too_long.value.body["param"] == "max_tokens" and too_long.value.body["code"] == 400
    with pytest.raises(openai.BadRequestError, match=r"temperature must be in \[0, 2\], got 3"):
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, temperature=3)
    # max_tokens above what the context leaves is clamped, not refused
    clamped = client.completions.create(model="tiny", prompt="hello", max_tokens=512, temperature=0)
    assert clamped.usage.prompt_tokens + clamped.usage.completion_tokens <= 512


def test_metrics_carry_vllms_names(server, client):
    client.completions.create(model="tiny", prompt="metrics please", max_tokens=3, temperature=0)
    text = requests.get(f"{server.url}/metrics", timeout=10).text  # no key: vLLM guards only /v1
    series = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_sum",
        "vllm:request_prompt_tokens_bucket",
        "vllm:lora_requests_info",
        "vllm:cache_config_info",
    ):
        assert name in series, name
    assert "# TYPE vllm:generation_tokens_total counter" in text
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
    success = re.search(
        r'vllm:request_success_total\{engine="0",finished_reason="length",model_name="tiny"\} (\S+)', text
    )
    assert success and float(success.group(1)) >= 1
    assert not any(name.startswith("tgi_") for name in series)


def test_access_lines_leave_out_the_quiet_routes(server, client):
    client.models.list()
    requests.get(f"{server.url}/health", timeout=5)
    access = [line for line in server.lines if line.startswith("INFO:") and "HTTP/1.1" in line]
    assert any('"GET /v1/models HTTP/1.1" 200' in line for line in access)
    assert not any(route in line for line in access for route in ("/health", "/metrics", "/version"))


def test_sigterm_stops_it_cleanly(server):
    """Last: stops the shared server."""
    assert server.stop() == 0
    assert "[shutdown] API server: shutdown triggered" in server.output
    assert "INFO:     Finished server process" in server.output


# -- refusals, each a whole start ------------------------------------------------------------------------------
def test_refusals_print_vllms_lines_and_exit_1(tiny_model, adapter, tmp_path):
    (tmp_path / "empty").mkdir()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    ranked = make_adapter(tiny_model, tmp_path / "rank32", rank=32)
    cases = {
        "not a model": (VllmProcess(tmp_path / "empty"), "Invalid repository ID or local directory specified"),
        "memory": (
            VllmProcess(tiny_model, "--gpu-memory-utilization", "0.0000001"),
            "ValueError: No available memory for the cache blocks.",
        ),
        "max model len": (
            VllmProcess(tiny_model, "--max-model-len", "100000"),
            "Value error, User-specified max_model_len (100000) is greater than the derived max_model_len",
        ),
        "port": (
            VllmProcess(tiny_model, port=busy.getsockname()[1]),
            "OSError: [Errno 98] Address already in use",
        ),
        "adapter": (
            VllmProcess(tiny_model, "--enable-lora", "--lora-modules", f"ghost={tmp_path / 'nowhere'}"),
            f"ValueError: Loading lora ghost failed: No adapter found for {tmp_path / 'nowhere'}",
        ),
        "rank": (
            VllmProcess(tiny_model, "--enable-lora", "--lora-modules", json.dumps({"name": "r", "path": str(ranked)})),
            "ValueError: LoRA rank 32 is greater than max_lora_rank 16.",
        ),
        "kv cache": (
            VllmProcess(tiny_model, env={"VLLM_CPU_KVCACHE_SPACE": "0.0001"}),
            "ValueError: To serve at least one request with the model's max seq len (2048), (",
        ),
        "lora off": (
            VllmProcess(tiny_model, "--lora-modules", f"mine={adapter}"),
            "ValueError: LoRA is not enabled. Use --enable-lora to enable LoRA.",
        ),
    }
    try:
        for process, _ in cases.values():
            process.start()
        for case, (process, last) in cases.items():
            assert process.wait_exit() == 1, (case, process.output)
            assert last in process.output, (case, process.output)
            assert not any("Starting vLLM server on" in line for line in process.lines), case
    finally:
        busy.close()
        for process, _ in cases.values():
            process.stop()
    memory = cases["memory"][0].lines
    assert any("EngineCore failed to start." in line and line.startswith("(EngineCore pid=") for line in memory)
    assert memory[-1] == (
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}"
    )
    not_a_model = cases["not a model"][0].lines
    at = _index(not_a_model, "1 validation error for ModelConfig")
    assert not_a_model[at] == "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig"
    assert (
        not_a_model[at + 1]
        == f"  Value error, Invalid repository ID or local directory specified: '{tmp_path / 'empty'}'."
    )
    port = cases["port"][0].lines
    assert port[-1] == "OSError: [Errno 98] Address already in use"
    assert not any("Loading model from scratch" in line for line in port)  # the port is taken before the model loads
