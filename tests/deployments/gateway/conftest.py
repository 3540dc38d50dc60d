"""The inference gateway as it runs in production: uvicorn serving console.gateway_asgi in its own process, on the
test database and the suite's Redis, in front of serve.py subprocesses on a tiny model (the CPU stand-in for TGI,
speaking TGI's and OpenAI's protocols)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from django.conf import settings

from tests.conftest import ROOT, _test_database_url, need
from tests.support.gateway_process import GatewayProcess
from tests.support.serve_process import ServeProcess, make_model, ml_env, ml_python

SERVER_KEY = "server-key-only-the-console-knows"
LIMITS = ("--max-concurrent-requests", "32", "--max-input-tokens", "200", "--max-total-tokens", "256")

# Run in the ML environment: a LoRA adapter whose weights are not zero, so it changes the greedy answer.
MAKE_ADAPTER = """
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
torch.manual_seed(1234)
config = LoraConfig(r=8, lora_alpha=32, init_lora_weights=False, task_type="CAUSAL_LM",
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
get_peft_model(AutoModelForCausalLM.from_pretrained(sys.argv[1]), config).save_pretrained(sys.argv[2])
"""


@pytest.fixture(scope="session")
def gateway(redis_url, django_db_setup, django_db_blocker):
    """The gateway on the test database. Tests using it need committed data (transactional_db). It trusts
    nothing it cached (GATEWAY_CACHE_SECONDS=0) and writes the inference log every 0.2 s."""
    with django_db_blocker.unblock():
        database = _test_database_url()
    env = dict(
        os.environ,
        DATABASE_URL=database,
        REDIS_URL=redis_url,
        DATA_DIR=str(settings.DATA_DIR),
        GATEWAY_CACHE_SECONDS="0",
        GATEWAY_FLUSH_SECONDS="0.2",
        PYTHONUNBUFFERED="1",
    )
    process = GatewayProcess(env).start()
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def _gateway_drained(request):
    """After a test that called the gateway, wait until its flusher sealed every record and let go: the database
    flush between tests truncates the tables a sealing transaction in the gateway process holds locks on. Before
    it, forget every quota window: key and team ids start again with each test database, Redis does not."""
    from deployments.gateway import records

    client = records._redis()
    for name in client.scan_iter("gateway:quota:*"):
        client.delete(name)
    yield
    if "gateway" not in request.fixturenames:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not client.xlen(records.STREAM) and not client.exists(records.LOCK):
            return
        time.sleep(0.05)
    pytest.fail("the gateway did not seal its inference records within 30 s")


@pytest.fixture(scope="session")
def tiny_with_adapter(tmp_path_factory):
    """The tiny model and a LoRA adapter `mine` for it (made once, in the ML environment)."""
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run serve.py")
    root = tmp_path_factory.mktemp("gateway-model")
    model_dir = make_model(root / "tiny")
    done = subprocess.run(
        [ml_python(), "-c", MAKE_ADAPTER, str(model_dir), str(root / "mine")],
        env=ml_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return model_dir, root / "mine"


@pytest.fixture(scope="session")
def served(tiny_with_adapter):
    """serve.py with the adapter, answering only requests with SERVER_KEY (as the console launches servers)."""
    model_dir, adapter = tiny_with_adapter
    process = ServeProcess(model_dir, "--lora-adapters", f"mine={adapter}", *LIMITS, env={"API_KEY": SERVER_KEY})
    process.start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()
