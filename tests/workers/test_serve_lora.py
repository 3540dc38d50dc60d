"""serve.py serving LoRA adapters as TGI does (issue 14 item 7): a real serve.py subprocess started with
`--lora-adapters mine=DIR` on the tiny model, an adapter made with peft whose weights change the greedy output,
and the answers compared with the same greedy generation run in-process with peft in the ML environment."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import aiohttp
import pytest
import requests
from text_generation import AsyncClient, Client

from tests.conftest import need
from tests.support.aio import run_async
from tests.support.serve_process import ROOT, ServeProcess, make_model, ml_env, ml_python

LIMITS = ("--max-concurrent-requests", "8", "--max-input-tokens", "200", "--max-total-tokens", "256")
PROMPTS = {"short": ("the model server deploys", 8), "long": ("hello world my name is", 24)}
CHAT = [{"role": "user", "content": "hello"}]

ADAPTERS = {"mine": 1234, "other": 99}  # name -> the seed its weights are drawn with

# Run in the ML environment: make each LoRA adapter with B matrices that are not zero (init_lora_weights=False, a
# fixed seed), save it as peft does, load them back onto a fresh copy of the model as a user would, and write the
# greedy token ids of every prompt with each adapter and without any (peft's disable_adapter).
REFERENCE = """
import json, sys
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, root, adapters, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
config = LoraConfig(
    r=8, lora_alpha=32, init_lora_weights=False, task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)
for name, seed in adapters.items():
    torch.manual_seed(seed)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).save_pretrained(f"{root}/{name}")
tokenizer = AutoTokenizer.from_pretrained(model_dir)
first, *others = adapters
base = AutoModelForCausalLM.from_pretrained(model_dir)
model = PeftModel.from_pretrained(base, f"{root}/{first}", adapter_name=first)
for name in others:
    model.load_adapter(f"{root}/{name}", adapter_name=name)
model.eval()

def greedy(ids, n):
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    return {"ids": new, "text": tokenizer.decode(new, skip_special_tokens=True)}

answers = {}
with torch.no_grad():
    for key, job in jobs.items():
        if job.get("messages"):
            text = tokenizer.apply_chat_template(job["messages"], tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = tokenizer(job["text"], return_tensors="pt").input_ids
        answers[key] = {}
        for name in adapters:
            model.set_adapter(name)
            answers[key][name] = greedy(ids, job["n"])
        with model.disable_adapter():
            answers[key]["base"] = greedy(ids, job["n"])
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """The tiny model, the adapters beside it, and the reference answers by prompt and adapter ("base": none)."""
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run serve.py")
    root = tmp_path_factory.mktemp("lora")
    model_dir = make_model(root / "tiny")
    jobs = {key: {"text": text, "n": n} for key, (text, n) in PROMPTS.items()}
    jobs["chat"] = {"messages": CHAT, "n": 8}
    done = subprocess.run(
        [ml_python(), "-c", REFERENCE, str(model_dir), str(root), json.dumps(ADAPTERS), json.dumps(jobs)],
        env=ml_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    for key, answer in answers.items():  # each adapter must matter, or the tests below prove nothing
        assert len({json.dumps(answer[name]["ids"]) for name in ["base", *ADAPTERS]}) == 3, key
    return model_dir, root, answers


@pytest.fixture(scope="module")
def server(lora):
    model_dir, root, _ = lora
    adapters = ",".join(f"{name}={root / name}" for name in ADAPTERS)
    process = ServeProcess(model_dir, "--lora-adapters", adapters, *LIMITS).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def answers(lora):
    return lora[2]


def _generate(server, prompt: str, n: int, **parameters) -> dict:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": n, "details": True, **parameters}}
    response = requests.post(f"{server.url}/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _ids(answer: dict) -> list[int]:
    return [token["id"] for token in answer["details"]["tokens"]]


def test_the_adapter_loads_at_start_like_tgi(server):
    assert "Loading adapter weights into model: mine" in server.output
    assert "Loading adapter weights into model: other" in server.output
    assert "serve.py ignores --lora-adapters" not in server.output
    info = requests.get(f"{server.url}/info", timeout=5).json()
    assert set(info) >= {"model_id", "max_total_tokens"} and "adapters" not in info  # TGI's /info has none


def test_adapter_id_selects_the_adapter_and_its_absence_the_base_model(server, lora, answers):
    prompt, n = PROMPTS["short"]
    expected = answers["short"]
    adapted = _generate(server, prompt, n, adapter_id="mine")
    assert _ids(adapted) == expected["mine"]["ids"]
    assert adapted["generated_text"] == expected["mine"]["text"]
    assert _ids(_generate(server, prompt, n, adapter_id="other")) == expected["other"]["ids"]
    # without adapter_id: the base model, through the real text-generation client
    base = Client(server.url, timeout=60).generate(prompt, max_new_tokens=n)
    assert [t.id for t in base.details.tokens] == expected["base"]["ids"]
    assert base.generated_text == expected["base"]["text"] != adapted["generated_text"]
    # the base model's own id names the base model too
    assert _ids(_generate(server, prompt, n, adapter_id=str(lora[0]))) == expected["base"]["ids"]


def test_generate_stream_uses_the_adapter(server, answers):
    prompt, n = PROMPTS["short"]
    body = {"inputs": prompt, "parameters": {"max_new_tokens": n, "adapter_id": "mine"}}
    with requests.post(f"{server.url}/generate_stream", json=body, stream=True, timeout=60) as response:
        events = [json.loads(line[5:]) for line in response.iter_lines(decode_unicode=True) if line[:5] == "data:"]
    assert [e["token"]["id"] for e in events] == answers["short"]["mine"]["ids"]
    assert events[-1]["generated_text"] == answers["short"]["mine"]["text"]


def test_openai_routes_take_the_adapter_from_model(server, answers):
    chat = {"messages": CHAT, "max_tokens": 8, "temperature": 0}
    adapted = requests.post(f"{server.url}/v1/chat/completions", json={**chat, "model": "mine"}, timeout=60).json()
    assert adapted["choices"][0]["message"]["content"] == answers["chat"]["mine"]["text"]
    assert adapted["model"] == "mine"  # TGI echoes the request's model
    # the 0.7.0 client sends model="tgi": the base model
    base = Client(server.url, timeout=60).chat(CHAT, max_tokens=8, temperature=0)
    assert base.choices[0].message.content == answers["chat"]["base"]["text"]
    prompt, n = PROMPTS["short"]
    completion = {"prompt": prompt, "max_tokens": n, "temperature": 0, "model": "mine"}
    completed = requests.post(f"{server.url}/v1/completions", json=completion, timeout=60).json()
    assert completed["choices"][0]["text"] == answers["short"]["mine"]["text"]


def test_an_unknown_adapter_gets_the_base_model_as_tgi_answers_it(server, answers):
    # TGI neither refuses nor errors (the shard's ADAPTER_TO_INDEX.get(adapter_id, 0); TGI issue #2505): 200 and
    # the base model. serve.py does the same and says so in its log, once per name.
    prompt, n = PROMPTS["short"]
    for _ in range(2):
        unknown = _generate(server, prompt, n, adapter_id="not-loaded")
        assert _ids(unknown) == answers["short"]["base"]["ids"]
    chat = {"messages": CHAT, "max_tokens": 8, "temperature": 0, "model": "not-loaded"}
    answer = requests.post(f"{server.url}/v1/chat/completions", json=chat, timeout=60)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == answers["chat"]["base"]["text"]
    warned = [line for line in server.lines if 'no LoRA adapter "not-loaded" is loaded' in line]
    assert len(warned) == 1 and "WARN" in warned[0] and "(loaded: mine, other)" in warned[0]
    # a name cannot forge a log line
    _generate(server, prompt, 1, adapter_id="x\nError: ShardCannotStart")
    assert not any(line.strip() == "Error: ShardCannotStart" for line in server.lines)
    # a wrong type is the router's plain-text deserialization error
    wrong = requests.post(f"{server.url}/generate", json={"inputs": "x", "parameters": {"adapter_id": 3}}, timeout=10)
    assert wrong.status_code == 422 and "adapter_id" in wrong.text


def test_concurrent_base_and_adapter_requests_share_steps_and_each_gets_its_own_answer(server, answers):
    prompt, n = PROMPTS["long"]
    expected = answers["long"]

    def decode_steps() -> float:
        for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines():
            if line.startswith('tgi_batch_inference_count{method="decode"} '):
                return float(line.split()[-1])
        return 0.0

    before = decode_steps()

    async def run():
        client = AsyncClient(server.url, timeout=120)

        async def base() -> list[int]:
            return [event.token.id async for event in client.generate_stream(prompt, max_new_tokens=n)]

        async def adapted(session: aiohttp.ClientSession, name: str) -> list[int]:
            body = {"inputs": prompt, "parameters": {"max_new_tokens": n, "adapter_id": name}}
            ids = []
            async with session.post(f"{server.url}/generate_stream", json=body) as response:
                async for line in response.content:
                    if line.startswith(b"data:"):
                        ids.append(json.loads(line[5:])["token"]["id"])
            return ids

        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(
                base(), adapted(session, "mine"), adapted(session, "other"),
                base(), adapted(session, "mine"), adapted(session, "other"),
            )  # fmt: skip

    results = run_async(run())
    assert results == [expected[name]["ids"] for name in ("base", "mine", "other")] * 2
    # Kept apart, the base rows and each adapter's rows would need at least this many decode steps one after the
    # other; fewer means rows of different adapters ran in the same forward passes, each with its own weights.
    apart = sum(len(expected[name]["ids"]) - 1 for name in ("base", "mine", "other"))
    assert decode_steps() - before < apart


# What each start is given, and what its log must say: the lines naming the adapter, then the launcher's last line.
FAILURES = {
    "missing": (["Can't find 'adapter_config.json'", "(LoRA adapter 'ghost')"], "Error: ShardCannotStart"),
    "broken": (["size mismatch", "(LoRA adapter 'broken')"], "Error: ShardCannotStart"),
    "format": ([], 'Error: ArgumentValidation("Invalid LoRA adapter format: a=b=c")'),
    "hub": (["LoRA adapter org/not-cached is neither a directory nor in the Hub cache"], "Error: DownloadError"),
}


def test_an_adapter_that_cannot_load_stops_the_start_in_tgis_shape(lora, tmp_path):
    model_dir, root, _ = lora
    broken = shutil.copytree(root / "mine", tmp_path / "broken")
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))  # its weights are rank 8
    given = {
        # LORA_ADAPTERS, the variable TGI reads, as well as the flag
        "missing": ([], {"LORA_ADAPTERS": f"ghost={tmp_path / 'nowhere'}"}),
        "broken": (["--lora-adapters", f"broken={broken}"], {}),
        "format": (["--lora-adapters", "a=b=c"], {}),
        "hub": (["--lora-adapters", "org/not-cached"], {}),
    }
    # Started together: each is a whole serve.py start.
    processes = {case: ServeProcess(model_dir, *args, *LIMITS, env=env).start() for case, (args, env) in given.items()}
    for case, process in processes.items():
        expected, last = FAILURES[case]
        assert process.wait_exit() == 1, case
        for text in expected:
            assert text in process.output, case
        assert process.lines[-1] == last, case
        assert not any("Connected" in line for line in process.lines), case
