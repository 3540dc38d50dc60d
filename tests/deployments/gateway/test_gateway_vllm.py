"""A vLLM deployment behind the gateway and in the playground (issue 16, point 4), against vllm_serve.py (the CPU
stand-in speaking vLLM's routes) started with the arguments the vLLM backend builds for the deployment's spec:
the official `openai` client (chat and completion, streaming and not, an adapter by `name:adapter`) reaches vLLM
under the model name it serves; the unchanged `text-generation` client gets TGI's answers and events translated
from vLLM's /v1/completions; /info answers from what the console knows; the playground streams both modes."""

from __future__ import annotations

import time

import openai
import pytest
import requests
import text_generation

from deployments.backends import get_backend
from deployments.backends.vllm.launch import launch_plan
from deployments.gateway import keys
from deployments.gateway.models import InferenceRecord
from deployments.registry.models import ModelArtifact, ModelRepo
from deployments.serving.models import Deployment, DeploymentSpec
from tests.console.test_websocket import session_cookie
from tests.factories import DeploymentFactory, DeploymentSpecFactory
from tests.support.aio import run_async
from tests.support.deploy_fixtures import process_host, ready_artifact
from tests.support.serve_process import ServeProcess, free_port, ml_python
from tests.support.vllm_deploy import playground_events

pytestmark = pytest.mark.django_db(transaction=True)

REPO = "tests/tiny-vllm"  # the vLLM backend serves the base model under its repo id
VLLM_KEY = "vllm-server-key-only-the-console-knows"
CHAT = [{"role": "user", "content": "hello there"}]
GREEDY = {"max_tokens": 8, "temperature": 0}


def _spec(model_dir, adapter) -> DeploymentSpec:
    """The spec the test deployment has, unsaved: what the backend builds the command line from."""
    artifact = ModelArtifact(repo=ModelRepo(repo_id=REPO), path=str(model_dir))
    return DeploymentSpec(
        artifact=artifact, backend="vllm", device="cpu", lora_adapters=[{"name": "mine", "path": str(adapter)}]
    )


@pytest.fixture(scope="session")
def vllm_served(tiny_with_adapter):
    """vllm_serve.py as the process runtime starts it for a CPU vLLM spec with the adapter `mine`: the backend's
    own launcher arguments and environment, the key in VLLM_API_KEY."""
    model_dir, adapter = tiny_with_adapter
    backend, spec, port = get_backend("vllm"), _spec(model_dir, adapter), free_port()
    plan = launch_plan(
        docker=False,
        model_dir=str(model_dir),
        model_store=str(model_dir.parent),
        num_shard=1,
        instance="gateway-vllm",
        bind_address="127.0.0.1",
        port=port,
    )
    env = {**backend.launch_env(spec, gpu_indexes=[], native=True), backend.server_key_env: VLLM_KEY}
    process = ServeProcess(model_dir, env=env, port=port)
    process.command = [
        ml_python(),
        "-m",
        f"workers.jobs.{backend.launcher_stand_in}",
        *backend.launcher_args(spec, plan),
    ]
    assert process.command[process.command.index("--served-model-name") + 1] == REPO
    process.start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture
def world(gateway, vllm_served, tiny_with_adapter, admin):
    model_dir, adapter = tiny_with_adapter
    host = process_host("gw-vllm-host")
    artifact = ready_artifact(host, model_dir, repo_id=REPO)
    deployment = DeploymentFactory(
        name="vtiny",
        state=Deployment.State.RUNNING,
        endpoint=vllm_served.url,
        server_key=VLLM_KEY,
        host=host,
        server="vllm_serve.py 0.34.0",
    )
    DeploymentSpecFactory(
        deployment=deployment,
        artifact=artifact,
        backend="vllm",
        device="cpu",
        lora_adapters=[{"name": "mine", "path": str(adapter)}],
        current=True,
    )
    key, raw = keys.key_create(actor=admin, name="app", user=admin, deployments=[deployment])
    return {"deployment": deployment, "key": key, "raw": raw, "admin": admin}


def _direct(served, path: str, body: dict) -> dict:
    response = requests.post(
        f"{served.url}{path}", json=body, headers={"Authorization": f"Bearer {VLLM_KEY}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def _openai(gateway, raw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=raw, max_retries=0, timeout=60)


# -- OpenAI routes: passed through, `model` rewritten ---------------------------------------------------------
def test_openai_client_reaches_vllm_under_the_name_it_serves(gateway, vllm_served, world):
    client = _openai(gateway, world["raw"])
    direct = _direct(vllm_served, "/v1/chat/completions", {"model": REPO, "messages": CHAT, **GREEDY})
    answer = client.chat.completions.create(model="vtiny", messages=CHAT, **GREEDY)
    assert answer.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert answer.usage.completion_tokens == direct["usage"]["completion_tokens"] == 8
    assert answer.model == REPO  # vLLM's own answer, passed on as it is

    chunks = list(client.chat.completions.create(model="vtiny", messages=CHAT, stream=True, **GREEDY))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert all(c.usage is None for c in chunks)  # the gateway asked vLLM for usage; the caller did not

    direct_text = _direct(vllm_served, "/v1/completions", {"model": REPO, "prompt": "the model", **GREEDY})
    completion = client.completions.create(model="vtiny", prompt="the model", **GREEDY)
    assert completion.choices[0].text == direct_text["choices"][0]["text"]
    parts = client.completions.create(
        model="vtiny", prompt="the model", stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    parts = list(parts)
    assert "".join(p.choices[0].text for p in parts if p.choices) == completion.choices[0].text
    assert parts[-1].usage.completion_tokens == 8


def test_name_colon_adapter_reaches_the_vllm_lora_module(gateway, vllm_served, world):
    client = _openai(gateway, world["raw"])
    base = client.chat.completions.create(model="vtiny", messages=CHAT, **GREEDY).choices[0].message.content
    adapted = client.chat.completions.create(model="vtiny:mine", messages=CHAT, **GREEDY)
    direct = _direct(vllm_served, "/v1/chat/completions", {"model": "mine", "messages": CHAT, **GREEDY})
    assert adapted.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert adapted.choices[0].message.content != base, "the adapter must change the greedy answer"
    streamed = client.completions.create(model="vtiny:mine", prompt="the model", stream=True, **GREEDY)
    direct_text = _direct(vllm_served, "/v1/completions", {"model": "mine", "prompt": "the model", **GREEDY})
    assert "".join(p.choices[0].text for p in streamed if p.choices) == direct_text["choices"][0]["text"]


# -- TGI-native routes: translated ----------------------------------------------------------------------------
def test_text_generation_client_generate_and_stream_through_llm_routes(gateway, vllm_served, world):
    auth = {"Authorization": f"Bearer {world['raw']}"}
    client = text_generation.Client(f"{gateway.url}/llm/vtiny", headers=auth, timeout=60)
    direct = _direct(
        vllm_served, "/v1/completions", {"model": REPO, "prompt": "the model server", "max_tokens": 8, "temperature": 0}
    )
    answer = client.generate("the model server", max_new_tokens=8)  # POST /llm/vtiny, as the client does
    assert answer.generated_text == direct["choices"][0]["text"]
    assert answer.details.generated_tokens == 8 and answer.details.finish_reason.value == "length"
    assert len(answer.details.tokens) == 8 and all(t.logprob is not None for t in answer.details.tokens)

    events = list(client.generate_stream("the model server", max_new_tokens=8))
    assert "".join(e.token.text for e in events if not e.token.special) == answer.generated_text
    assert all(e.details is None for e in events[:-1])
    assert events[-1].generated_text == answer.generated_text and events[-1].details.generated_tokens == 8

    body = {"inputs": "the model server", "parameters": {"max_new_tokens": 8, "adapter_id": "mine"}}
    adapted = requests.post(f"{gateway.url}/llm/vtiny/generate", json=body, headers=auth, timeout=60)
    assert adapted.status_code == 200, adapted.text
    direct_adapted = _direct(
        vllm_served,
        "/v1/completions",
        {"model": "mine", "prompt": "the model server", "max_tokens": 8, "temperature": 0},
    )
    assert adapted.json() == {"generated_text": direct_adapted["choices"][0]["text"]}  # no details unless asked
    assert adapted.json()["generated_text"] != answer.generated_text

    raw = requests.post(f"{gateway.url}/llm/vtiny/generate_stream", json=body, headers=auth, timeout=60, stream=True)
    lines = [line for line in raw.iter_lines() if line.startswith(b"data:")]
    assert raw.headers["content-type"].startswith("text/event-stream")
    last = text_generation.types.StreamResponse.model_validate_json(lines[-1][len(b"data:") :])
    assert last.generated_text == adapted.json()["generated_text"] and last.details.generated_tokens == 8


def test_the_inference_log_counts_a_translated_stream(gateway, world):
    client = text_generation.Client(
        f"{gateway.url}/llm/vtiny", headers={"Authorization": f"Bearer {world['raw']}"}, timeout=60
    )
    list(client.generate_stream("the model server", max_new_tokens=6))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not InferenceRecord.objects.filter(key_id=world["key"].pk).exists():
        time.sleep(0.2)
    record = InferenceRecord.objects.get(key_id=world["key"].pk)
    assert (record.status, record.route, record.stream, record.deployment_name) == (200, "tgi.compat", True, "vtiny")
    assert record.completion_tokens == 6 and record.prompt_tokens > 0 and record.ttft_ms is not None


def test_tgi_refusals_and_info_for_a_vllm_deployment(gateway, world):
    auth = {"Authorization": f"Bearer {world['raw']}"}
    client = text_generation.Client(f"{gateway.url}/llm/vtiny", headers=auth, timeout=60)
    # What the completion API cannot express is refused by the gateway, naming it.
    with pytest.raises(text_generation.errors.ValidationError, match="typical_p"):
        client.generate("the model", max_new_tokens=4, typical_p=0.5)
    # vLLM's own refusal, in TGI's shape: the client raises by its error_type.
    with pytest.raises(text_generation.errors.ValidationError, match="max_tokens"):
        client.generate("the model", max_new_tokens=100_000)
    streamed = requests.post(
        f"{gateway.url}/llm/vtiny/generate_stream",
        json={"inputs": "x", "parameters": {"decoder_input_details": True}},
        headers=auth,
        timeout=60,
    )
    assert streamed.status_code == 400 and streamed.json()["error_type"] == "validation"
    missing = requests.post(
        f"{gateway.url}/llm/vtiny/generate",
        json={"inputs": "x", "parameters": {"adapter_id": "nope"}},
        headers=auth,
        timeout=60,
    )
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"

    info = requests.get(f"{gateway.url}/llm/vtiny/info", headers=auth, timeout=60)
    assert info.status_code == 200
    assert {k: info.json()[k] for k in ("model_id", "model_sha", "backend", "served_model_name", "version")} == {
        "model_id": REPO,
        "model_sha": "0" * 40,
        "backend": "vllm",
        "served_model_name": REPO,
        "version": "0.34.0",
    }
    assert info.json()["adapters"] == ["mine"]


# -- the playground ---------------------------------------------------------------------------------------------


def test_the_playground_streams_both_modes_from_vllm(vllm_served, world):
    cookie = session_cookie(world["admin"])
    deployment_id = world["deployment"].pk
    greedy = {"max_new_tokens": 12, "do_sample": False}
    events = run_async(
        playground_events(cookie, deployment_id, {"mode": "completion", "prompt": "hello model", "parameters": greedy})
    )
    direct = _direct(
        vllm_served, "/v1/completions", {"model": REPO, "prompt": "hello model", "max_tokens": 12, "temperature": 0}
    )
    end = events[-1]
    assert end["type"] == "end", events
    assert "".join(e["text"] for e in events if e["type"] == "token") == direct["choices"][0]["text"]
    assert end["generated_tokens"] == 12 and end["finish_reason"] == "length" and end["ttft_ms"] > 0

    events = run_async(
        playground_events(cookie, deployment_id, {"mode": "chat", "messages": CHAT, "parameters": greedy})
    )
    direct = _direct(
        vllm_served, "/v1/chat/completions", {"model": REPO, "messages": CHAT, "max_tokens": 12, "temperature": 0}
    )
    assert events[-1]["type"] == "end", events
    assert "".join(e["text"] for e in events if e["type"] == "token") == direct["choices"][0]["message"]["content"]
    assert events[-1]["generated_tokens"] == direct["usage"]["completion_tokens"]
