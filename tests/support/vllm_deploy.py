"""What the vLLM end-to-end tests ask of a running vLLM deployment, through the runtimes alike: the playground (the
websocket the page opens, deployments/serving/playground.py behind it) and the official `openai` client through
the inference gateway, each answer compared with what the server itself says for the same greedy request."""

from __future__ import annotations

import openai
import requests
from channels.testing import WebsocketCommunicator

from console.asgi import application
from deployments.gateway import keys
from deployments.models import Deployment
from tests.console.test_websocket import session_cookie
from tests.support.aio import run_async

ORIGIN = (b"origin", b"http://127.0.0.1")
REPO = "tests/tiny-llama"  # ready_artifact's repo id: the name vLLM serves the base model under
CHAT = [{"role": "user", "content": "hello there"}]
GREEDY = {"max_tokens": 8, "temperature": 0}


def direct(deployment: Deployment, path: str, body: dict) -> dict:
    """The server's own answer at its endpoint, with the key only the console holds."""
    response = requests.post(
        f"{deployment.endpoint}{path}",
        json=body,
        headers={"Authorization": f"Bearer {deployment.server_key.reveal()}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


async def playground_events(cookie: bytes, deployment_id: int, request: dict) -> list[dict]:
    socket = WebsocketCommunicator(
        application, f"/ws/deployments/{deployment_id}/playground/", headers=[ORIGIN, (b"cookie", cookie)]
    )
    connected, _ = await socket.connect()
    assert connected
    await socket.send_json_to({"type": "generate", **request})
    events = []
    while not events or events[-1]["type"] not in ("end", "error"):
        events.append(await socket.receive_json_from(timeout=60))
    await socket.disconnect()
    return events


def playground_answers(user, deployment: Deployment) -> None:
    """Both modes of the playground stream the server's greedy answer, token by token, with its counts."""
    cookie = session_cookie(user)
    greedy = {"max_new_tokens": 12, "do_sample": False}
    events = run_async(
        playground_events(cookie, deployment.pk, {"mode": "completion", "prompt": "hello model", "parameters": greedy})
    )
    body = {"model": REPO, "prompt": "hello model", **GREEDY, "max_tokens": 12}
    expected = direct(deployment, "/v1/completions", body)
    end = events[-1]
    assert end["type"] == "end", events
    assert "".join(e["text"] for e in events if e["type"] == "token") == expected["choices"][0]["text"]
    assert end["generated_tokens"] == 12 and end["finish_reason"] == "length" and end["ttft_ms"] > 0

    events = run_async(
        playground_events(cookie, deployment.pk, {"mode": "chat", "messages": CHAT, "parameters": greedy})
    )
    expected = direct(deployment, "/v1/chat/completions", {"model": REPO, "messages": CHAT, **GREEDY, "max_tokens": 12})
    assert events[-1]["type"] == "end", events
    assert "".join(e["text"] for e in events if e["type"] == "token") == expected["choices"][0]["message"]["content"]
    assert events[-1]["generated_tokens"] == expected["usage"]["completion_tokens"]


def openai_answers(gateway, user, deployment: Deployment) -> None:
    """The official client, with an inference key for this deployment, gets vLLM's answers through the gateway
    (chat and completion, streamed and not) under the deployment's name."""
    _key, raw = keys.key_create(actor=user, name=f"app-{deployment.pk}", user=user, deployments=[deployment])
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=raw, max_retries=0, timeout=60)
    expected = direct(deployment, "/v1/chat/completions", {"model": REPO, "messages": CHAT, **GREEDY})
    answer = client.chat.completions.create(model=deployment.name, messages=CHAT, **GREEDY)
    assert answer.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert answer.usage.completion_tokens == 8 and answer.model == REPO
    chunks = client.chat.completions.create(model=deployment.name, messages=CHAT, stream=True, **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content

    expected = direct(deployment, "/v1/completions", {"model": REPO, "prompt": "the model", **GREEDY})
    completion = client.completions.create(model=deployment.name, prompt="the model", **GREEDY)
    assert completion.choices[0].text == expected["choices"][0]["text"]
    parts = client.completions.create(model=deployment.name, prompt="the model", stream=True, **GREEDY)
    assert "".join(p.choices[0].text for p in parts if p.choices) == completion.choices[0].text
    # The key opens this deployment only through the gateway: the server's port refuses it.
    refused = requests.post(
        f"{deployment.endpoint}/v1/completions",
        json={"model": REPO, "prompt": "x", "max_tokens": 1},
        headers={"Authorization": f"Bearer {raw}"},
        timeout=30,
    )
    assert refused.status_code == 401
