"""The official `openai` client and the `text-generation` client, unchanged, against the gateway in front of a
serve.py deployment (issue 15, Show 1): chat, completion, streaming, an adapter; and the documented answer for a
revoked key, an expired key, a key for another deployment, a deployment the owner cannot see, a key over quota and
a deployment that is stopped."""

from __future__ import annotations

import time
from datetime import timedelta

import openai
import pytest
import requests
import text_generation
from django.utils import timezone

from deployments.gateway import keys
from deployments.gateway.models import InferenceKey, InferenceRecord, ServiceAccount
from deployments.serving.models import Deployment
from tests.deployments.gateway.conftest import SERVER_KEY
from tests.factories import DeploymentFactory, DeploymentSpecFactory
from tests.factories.accounts import TeamFactory
from tests.support.deploy_fixtures import process_host, ready_artifact

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = [{"role": "user", "content": "hello there"}]
GREEDY = {"max_tokens": 8, "temperature": 0}


@pytest.fixture
def world(gateway, served, tiny_with_adapter, admin):
    model_dir, adapter = tiny_with_adapter
    host = process_host("gw-host")
    artifact = ready_artifact(host, model_dir)
    running = {"state": Deployment.State.RUNNING, "endpoint": served.url, "server_key": SERVER_KEY, "host": host}
    tiny = DeploymentFactory(name="tiny", **running)
    DeploymentSpecFactory(
        deployment=tiny, artifact=artifact, lora_adapters=[{"name": "mine", "path": str(adapter)}], current=True
    )
    other = DeploymentFactory(name="other", **running)
    DeploymentSpecFactory(deployment=other, artifact=artifact, current=True)
    sleepy = DeploymentFactory(name="sleepy", state=Deployment.State.STOPPED)
    key, raw = keys.key_create(actor=admin, name="app", user=admin, deployments=[tiny, sleepy])
    return {"tiny": tiny, "other": other, "sleepy": sleepy, "key": key, "raw": raw, "admin": admin}


def _openai(gateway, raw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=raw, max_retries=0, timeout=60)


def _direct(served, path: str, body: dict) -> dict:
    response = requests.post(
        f"{served.url}{path}", json=body, headers={"Authorization": f"Bearer {SERVER_KEY}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_openai_client_chat_completion_and_streams_through_the_gateway(gateway, served, world):
    client = _openai(gateway, world["raw"])
    direct = _direct(served, "/v1/chat/completions", {"model": "tiny", "messages": CHAT, **GREEDY})
    answer = client.chat.completions.create(model="tiny", messages=CHAT, **GREEDY)
    assert answer.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert answer.usage.completion_tokens == direct["usage"]["completion_tokens"] > 0

    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, stream=True, **GREEDY))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer.choices[0].message.content
    # The gateway asks the server for usage to meter the call, but a caller who did not ask gets no usage chunk.
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    with_usage = list(
        client.chat.completions.create(
            model="tiny", messages=CHAT, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert with_usage[-1].usage.completion_tokens == answer.usage.completion_tokens

    direct_text = _direct(served, "/v1/completions", {"model": "tiny", "prompt": "the model", **GREEDY})
    completion = client.completions.create(model="tiny", prompt="the model", **GREEDY)
    assert completion.choices[0].text == direct_text["choices"][0]["text"]
    parts = client.completions.create(model="tiny", prompt="the model", stream=True, **GREEDY)
    direct_parts = openai.OpenAI(base_url=f"{served.url}/v1", api_key=SERVER_KEY).completions.create(
        model="tiny", prompt="the model", stream=True, **GREEDY
    )
    # (A stream holds back a last incomplete UTF-8 sequence, so it is compared with the server's own stream.)
    assert [p.choices[0].text for p in parts if p.choices] == [p.choices[0].text for p in direct_parts if p.choices]


def test_name_colon_adapter_reaches_the_adapter(gateway, served, world):
    client = _openai(gateway, world["raw"])
    base = client.chat.completions.create(model="tiny", messages=CHAT, **GREEDY).choices[0].message.content
    adapted = client.chat.completions.create(model="tiny:mine", messages=CHAT, **GREEDY).choices[0].message.content
    direct = _direct(served, "/v1/chat/completions", {"model": "mine", "messages": CHAT, **GREEDY})
    assert adapted == direct["choices"][0]["message"]["content"]
    assert adapted != base, "the adapter must change the greedy answer, or this test proves nothing"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="tiny:nope", messages=CHAT, **GREEDY)
    assert missing.value.body["code"] == "model_not_found"


def test_models_lists_only_what_the_key_may_use(gateway, world):
    ids = {model.id for model in _openai(gateway, world["raw"]).models.list()}
    assert ids == {"tiny", "tiny:mine", "sleepy"}


def test_text_generation_client_generate_stream_info_and_adapter(gateway, served, world):
    auth = {"Authorization": f"Bearer {world['raw']}"}
    client = text_generation.Client(f"{gateway.url}/llm/tiny", headers=auth, timeout=60)
    direct = text_generation.Client(served.url, headers={"Authorization": f"Bearer {SERVER_KEY}"}, timeout=60)
    answer = client.generate("the model server", max_new_tokens=8)
    assert answer.generated_text == direct.generate("the model server", max_new_tokens=8).generated_text
    assert answer.details.generated_tokens == 8
    tokens = [event.token.text for event in client.generate_stream("the model server", max_new_tokens=8)]
    assert "".join(tokens) == answer.generated_text
    # text-generation 0.7.0 has no adapter_id argument: applications name the adapter in the parameters, as TGI reads.
    body = {"inputs": "the model server", "parameters": {"max_new_tokens": 8, "adapter_id": "mine"}}
    adapted = requests.post(f"{gateway.url}/llm/tiny/generate", json=body, headers=auth, timeout=60).json()
    assert adapted["generated_text"] == _direct(served, "/generate", body)["generated_text"]
    assert adapted["generated_text"] != answer.generated_text
    info = requests.get(f"{gateway.url}/llm/tiny/info", headers=auth, timeout=30)
    assert info.status_code == 200 and info.json()["max_total_tokens"] == 256
    # The native routes too, as applications written against TGI call them.
    native = requests.post(
        f"{gateway.url}/llm/tiny/generate",
        json={"inputs": "the model server", "parameters": {"max_new_tokens": 8}},
        headers=auth,
        timeout=60,
    )
    assert native.status_code == 200 and native.json()["generated_text"] == answer.generated_text


def test_refusals_in_each_dialect(gateway, world, engineer):
    raw, tiny = world["raw"], world["tiny"]
    client = _openai(gateway, raw)
    tgi = text_generation.Client(f"{gateway.url}/llm/other", headers={"Authorization": f"Bearer {raw}"}, timeout=30)

    # A deployment the owner may use but the key is not scoped to: 403.
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="other", messages=CHAT, **GREEDY)
    assert denied.value.body["type"] == "permission_error"
    refused = requests.post(f"{gateway.url}/llm/other/generate", json={"inputs": "x"}, headers=tgi.headers)
    assert refused.status_code == 403 and refused.json() == {
        "error": "This key may not use the deployment 'other'.",
        "error_type": "forbidden",
    }

    # A deployment the key's owner cannot see (a service account of a team that neither owns nor was granted it)
    # is as absent as one that does not exist: 404.
    team = TeamFactory(name="apps")
    account = ServiceAccount.objects.create(name="billing", team=team, created_by=world["admin"])
    _, account_raw = keys.key_create(actor=world["admin"], name="svc", service_account=account, all_deployments=True)
    for model in ("tiny", "no-such-deployment"):
        with pytest.raises(openai.NotFoundError) as hidden:
            _openai(gateway, account_raw).chat.completions.create(model=model, messages=CHAT, **GREEDY)
        assert hidden.value.body["code"] == "model_not_found"
    assert _openai(gateway, account_raw).models.list().data == []

    # A stopped deployment: 503, with the state.
    with pytest.raises(openai.InternalServerError) as stopped:
        client.chat.completions.create(model="sleepy", messages=CHAT, **GREEDY)
    assert stopped.value.status_code == 503 and "stopped" in stopped.value.message

    # A key used from outside its source allow-list: 403 (the tests call from 127.0.0.1).
    _, fenced_raw = keys.key_create(
        actor=world["admin"], name="fenced", user=world["admin"], deployments=[tiny], allowed_sources=["10.0.0.0/8"]
    )
    with pytest.raises(openai.PermissionDeniedError) as fenced:
        _openai(gateway, fenced_raw).chat.completions.create(model="tiny", messages=CHAT, **GREEDY)
    assert fenced.value.body["code"] == "source_not_allowed"

    # No key, a wrong key: 401.
    assert requests.get(f"{gateway.url}/v1/models", timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        _openai(gateway, "llk_not-a-key").models.list()

    # Over quota: 429 with Retry-After, in both dialects.
    _, limited_raw = keys.key_create(
        actor=world["admin"], name="tight", user=world["admin"], deployments=[tiny], limits={"rpm": 1}
    )
    _openai(gateway, limited_raw).chat.completions.create(model="tiny", messages=CHAT, **GREEDY)
    with pytest.raises(openai.RateLimitError) as over:
        _openai(gateway, limited_raw).chat.completions.create(model="tiny", messages=CHAT, **GREEDY)
    assert int(over.value.response.headers["retry-after"]) >= 1
    with pytest.raises(text_generation.errors.RateLimitExceededError):
        text_generation.Client(
            f"{gateway.url}/llm/tiny", headers={"Authorization": f"Bearer {limited_raw}"}, timeout=30
        ).generate("x", max_new_tokens=2)

    # Revoked, then expired: 401 at once (the gateway checks the key on every call).
    client.models.list()
    keys.key_revoke(actor=world["admin"], key=world["key"])
    with pytest.raises(openai.AuthenticationError) as revoked:
        client.models.list()
    assert revoked.value.body["code"] == "invalid_api_key"
    fresh, fresh_raw = keys.key_create(actor=world["admin"], name="soon", user=world["admin"], deployments=[tiny])
    _openai(gateway, fresh_raw).models.list()
    InferenceKey.objects.filter(pk=fresh.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError):
        _openai(gateway, fresh_raw).models.list()
    expired = requests.post(
        f"{gateway.url}/llm/tiny/generate", json={"inputs": "x"}, headers={"Authorization": f"Bearer {fresh_raw}"}
    )
    assert expired.status_code == 401 and expired.json()["error_type"] == "unauthorized"


def test_every_call_lands_in_the_inference_log(gateway, world):
    client = _openai(gateway, world["raw"])
    answer = client.chat.completions.create(model="tiny:mine", messages=CHAT, **GREEDY)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="other", messages=CHAT, **GREEDY)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and InferenceRecord.objects.filter(key_id=world["key"].pk).count() < 2:
        time.sleep(0.2)
    used, refused = InferenceRecord.objects.filter(key_id=world["key"].pk).order_by("status")
    assert (used.status, used.deployment_name, used.adapter, used.route) == (200, "tiny", "mine", "openai.chat")
    assert used.completion_tokens == answer.usage.completion_tokens and used.prompt_tokens > 0
    assert used.owner == world["admin"].username and used.key_prefix == world["key"].prefix
    assert used.ttft_ms is not None and used.duration_ms >= used.ttft_ms
    assert used.prompt is None and used.completion == ""  # the deployment keeps token counts only
    assert (refused.status, refused.deployment_name) == (403, "other")
