"""The backend interface, TGI behind it: flags read as data from the file serve.py reads, arguments that are
all real launcher flags, a clean environment, spec checks that name their field, and its rule book."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from deployments.backends import BACKENDS, get_backend
from deployments.backends.base import Backend, SpecError
from tests.support.fixtures import ROOT
from workers.jobs import tgi_flags

TGI = get_backend("tgi")


def spec(**overrides):
    values = dict(
        quantize="bitsandbytes-nf4", dtype="bfloat16", kv_cache_dtype="fp8_e4m3fn", device="gpu",
        max_input_tokens=3000, max_total_tokens=4096, max_batch_prefill_tokens=4096, max_concurrent_requests=64,
        cuda_memory_fraction=0.8, lora_adapters=[{"name": "sql", "path": "/data/adapters/sql"}],
        extra_env={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "PORT": "1"}, credential=None,
    )  # fmt: skip
    return SimpleNamespace(**{**values, **overrides})


def test_every_backend_is_complete():
    for backend in BACKENDS.values():
        assert isinstance(backend, Backend) and backend.flags.flags and backend.rules.rules and backend.spec_checks
        assert 0 <= backend.memory.keep_free_fraction < 1 and backend.metric_names


def test_the_flag_table_is_the_json_serve_py_reads():
    shipped = json.loads((ROOT / "workers" / "jobs" / "flags" / "tgi.json").read_text())
    assert TGI.flags.program == shipped["program"] == "text-generation-launcher"
    assert set(TGI.flags.flags) == {flag.name for flag in tgi_flags.FLAGS} == {f["name"] for f in shipped["flags"]}
    assert TGI.flags.choices("--quantize") == tgi_flags.QUANTIZE_CHOICES


@pytest.mark.parametrize("docker", [False, True])
def test_arguments_are_all_real_launcher_flags_and_the_environment_is_clean(docker):
    plan = TGI.launch_plan(
        docker=docker, model_dir="/srv/models/org--m/abc", model_store="/srv/models", num_shard=2,
        instance="llmdeploy-x", bind_address="127.0.0.1", port=8123, master_port=29501, prometheus_port=9101,
    )  # fmt: skip
    args = TGI.launcher_args(spec(), plan)
    assert TGI.flags.unknown(args) == []
    assert args[args.index("--model-id") + 1] == ("/data/org--m/abc" if docker else "/srv/models/org--m/abc")
    env = TGI.launch_env(spec(), gpu_indexes=[1, 2], native=not docker)
    assert "PORT" not in env and env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert env.get("CUDA_VISIBLE_DEVICES") == (None if docker else "1,2")
    command = TGI.command_line(spec(), plan, port_shown="PORT")
    assert command[0] == "text-generation-launcher" and command[command.index("--port") + 1] == "PORT"


@pytest.mark.parametrize(
    ("docker", "expected"),
    [
        (True, "sql=/data/adapters/sql,tidy=/data/adapters/tidy,hub-adapter,elsewhere=/opt/e"),
        (False, "sql=/srv/models/adapters/sql,tidy=/srv/models/adapters/x/../tidy,hub-adapter,elsewhere=/opt/e"),
    ],
)
def test_adapter_paths_are_the_ones_the_server_sees(docker, expected):
    # In a container the host's store is mounted at /data: a host path there would name nothing.
    adapters = [
        {"name": "sql", "path": "/srv/models/adapters/sql"},
        {"name": "tidy", "path": "/srv/models/adapters/x/../tidy"},
        {"name": "hub-adapter"},  # a Hub id: TGI fetches it, no path to map
        {"name": "elsewhere", "path": "/opt/e"},  # outside the store: left for the server to report
    ]
    plan = TGI.launch_plan(
        docker=docker, model_dir="/srv/models/org--m/abc", model_store="/srv/models/", num_shard=1,
        instance="llmdeploy-x", bind_address="127.0.0.1", port=8123,
    )  # fmt: skip
    args = TGI.launcher_args(spec(lora_adapters=adapters), plan)
    assert args[args.index("--lora-adapters") + 1] == expected
    assert args[args.index("--model-id") + 1] == ("/data/org--m/abc" if docker else "/srv/models/org--m/abc")


@pytest.mark.parametrize(
    ("values", "checkpoint", "field"),
    [
        ({"quantize": "awq"}, {"quantization": None}, "quantize"),
        ({"quantize": "eetq"}, {"quantization": "gptq"}, "quantize"),
        ({"quantize": "fp8", "dtype": "bfloat16"}, {}, "dtype"),
        ({"max_input_tokens": 4096, "max_total_tokens": 4096}, {}, "max_input_tokens"),
        ({"max_input_tokens": 4000, "max_batch_prefill_tokens": 2000}, {}, "max_batch_prefill_tokens"),
        ({"cuda_memory_fraction": 1.5}, {}, "cuda_memory_fraction"),
        ({"extra_env": {"API_KEY": "x"}}, {}, "extra_env"),
    ],
)
def test_spec_checks_refuse_with_the_field_at_fault(values, checkpoint, field):
    base = {"quantize": "", "dtype": "", "cuda_memory_fraction": 1.0, "extra_env": {}}
    with pytest.raises(SpecError) as refused:
        TGI.check_spec({**base, **values}, checkpoint)
    assert refused.value.field == field and refused.value.message


def test_a_pre_quantized_checkpoint_passes_with_its_own_method():
    base = {"dtype": "", "cuda_memory_fraction": 1.0, "extra_env": {}}
    TGI.check_spec({**base, "quantize": "awq"}, {"quantization": "awq"})
    TGI.check_spec({**base, "quantize": "marlin"}, {"quantization": "gptq"})


def test_its_rule_book_diagnoses_a_launch_log():
    log = [
        "2024-12-11T18:26:36.303431Z ERROR text_generation_launcher: Shard 0 failed to start",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "Error: ShardCannotStart",
    ]
    found = TGI.diagnose(log, exit_code=1)
    assert found.cause == "cuda_oom" and "2.00 GiB" in str(found.title)
    assert TGI.diagnose(["all quiet"], exit_code=3).cause == "unknown"
