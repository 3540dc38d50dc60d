"""vLLM behind the backend interface: its flag table (vLLM 0.34.0's `vllm serve`, as data), arguments that are all
real flags with valid values across many specs, a clean environment without secrets, its info and health calls
against a small HTTP server speaking vLLM's routes, spec checks that name their field, and request masking."""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from deployments.backends import BACKENDS, get_backend
from deployments.backends.base import SpecError
from deployments.backends.vllm import launch
from tests.support.fixtures import ROOT

VLLM = get_backend("vllm")
TABLE = json.loads((ROOT / "workers" / "jobs" / "flags" / "vllm.json").read_text())
# Every spelling `vllm serve` takes for a flag (its name, aliases, short forms and the spellings turning a switch
# off) -> the flag's row.
SPELLINGS = {
    **{
        name: row for row in TABLE["flags"] for name in (row["name"], *row.get("aliases", []), *row.get("negative", []))
    },
    **{short: next(r for r in TABLE["flags"] if r["name"] == long) for short, long in TABLE["short"].items()},
}
SECRET = "s3cret-server-key"


def spec(**overrides) -> SimpleNamespace:
    values = dict(
        artifact=SimpleNamespace(repo=SimpleNamespace(repo_id="meta-llama/Llama-3.1-8B-Instruct")),
        quantize="", dtype="", kv_cache_dtype="", device="gpu", gpu_memory_utilization=None, max_model_len=None,
        max_num_seqs=None, max_num_batched_tokens=None, lora_adapters=[], extra_env={}, credential=None,
        max_input_tokens=None, max_total_tokens=None, max_batch_prefill_tokens=None, max_concurrent_requests=128,
        cuda_memory_fraction=1.0,
    )  # fmt: skip
    return SimpleNamespace(**{**values, **overrides})


def plan(*, docker: bool, num_shard: int = 1):
    return VLLM.launch_plan(
        docker=docker, model_dir="/srv/models/org--m/abc", model_store="/srv/models", num_shard=num_shard,
        instance="llmdeploy-1-chat", bind_address="127.0.0.1", port=8123, master_port=29501, prometheus_port=9101,
    )  # fmt: skip


def parse(args: list[str]) -> dict[str, list[str]]:
    """The arguments read as `vllm serve` reads them by its table: the positional model, then each flag with its
    values. Fails on a flag the table lacks, a value outside its choices or of the wrong type."""
    assert args and not args[0].startswith("-"), "the model path comes first (vllm serve <model>)"
    given: dict[str, list[str]] = {"model_tag": [args[0]]}
    index = 1
    while index < len(args):
        flag = args[index]
        assert flag in SPELLINGS, f"{flag} is not a flag of vllm serve {TABLE['release']}"
        row, index = SPELLINGS[flag], index + 1
        values = []
        while index < len(args) and not args[index].startswith("--") and (row["kind"] != "value" or not values):
            values.append(args[index])
            index += 1
        if row["kind"] == "bool":
            assert values == [], f"{flag} is a switch"
        else:
            assert values, f"{flag} needs a value"
            assert row["kind"] in ("list", "repeat") or len(values) == 1, flag
        for value in values:
            if row["choices"]:
                assert value in row["choices"], (flag, value, row["choices"])
            {"int": int, "float": float}.get(row["type"], str)(value)
        assert flag not in given, f"{flag} given twice"
        given[flag] = values
    return given


MATRIX = [
    {},
    {"quantize": "awq", "dtype": "float16", "kv_cache_dtype": "fp8_e4m3fn"},
    {"quantize": "gptq", "kv_cache_dtype": "fp8_e5m2", "max_model_len": 8192, "max_num_seqs": 64},
    {"quantize": "fp8", "dtype": "bfloat16", "gpu_memory_utilization": 0.85, "max_num_batched_tokens": 16384},
    {"quantize": "compressed-tensors", "max_model_len": 131072, "max_num_seqs": 512, "max_num_batched_tokens": 2048},
    {"device": "cpu", "dtype": "bfloat16", "max_model_len": 2048},
    {"device": "cpu", "gpu_memory_utilization": 0.5},
    {
        "lora_adapters": [
            {"name": "sql", "path": "/srv/models/adapters/sql"},
            {"name": "support", "path": "/srv/models/adapters/support"},
        ]
    },
    {"lora_adapters": [{"name": "one", "path": "/srv/models/adapters/one"}], "gpu_memory_utilization": 1.0},
    # TGI's settings left at their values from before a switch: vLLM takes no flag for them.
    {"max_concurrent_requests": 64, "cuda_memory_fraction": 0.8, "max_input_tokens": 1000},
]


@pytest.mark.parametrize(("values", "docker", "num_shard"), list(itertools.product(MATRIX, [False, True], [1, 4])))
def test_every_emitted_flag_is_in_the_table_with_a_valid_value(values, docker, num_shard):
    args = VLLM.launcher_args(spec(**values), plan(docker=docker, num_shard=num_shard))
    given = parse(args)
    assert given["model_tag"] == ["/data/org--m/abc" if docker else "/srv/models/org--m/abc"]
    assert given["--port"] == ["8000" if docker else "8123"]
    assert given["--host"] == ["0.0.0.0" if docker else "127.0.0.1"]  # noqa: S104 - the container's own
    assert given["--tensor-parallel-size"] == [str(num_shard)]
    assert given["--served-model-name"] == ["meta-llama/Llama-3.1-8B-Instruct"]
    assert "--no-enable-log-requests" in given and "--enable-log-requests" not in given
    assert "--api-key" not in given and SECRET not in args  # the key comes from VLLM_API_KEY, never a flag
    share = given.get("--gpu-memory-utilization")
    if values.get("device") == "cpu":  # vLLM's CPU platform sizes its KV cache from VLLM_CPU_KVCACHE_SPACE
        assert share == ([f"{values['gpu_memory_utilization']:g}"] if "gpu_memory_utilization" in values else None)
    else:  # always said, so the share placement reserves is the share the server takes
        assert float(share[0]) == (values.get("gpu_memory_utilization") or launch.DEFAULT_GPU_MEMORY_UTILIZATION)


def test_the_table_is_vllm_0_34_serve_from_its_own_parser():
    assert TABLE["program"] == VLLM.flags.program == "vllm" and TABLE["subcommand"] == "serve"
    assert TABLE["release"] == VLLM.flags.release == launch.RELEASE == "0.34.0"
    assert "make_arg_parser" in TABLE["source"] and TABLE["wheel"].startswith("vllm-0.34.0-")
    assert set(VLLM.flags.flags) == {row["name"] for row in TABLE["flags"]}
    for name in ("--quantization", "--kv-cache-dtype", "--dtype", "--max-lora-rank", "--uvicorn-log-level"):
        assert VLLM.flags.choices(name), name
    assert TABLE["short"]["-tp"] == "--tensor-parallel-size" and TABLE["short"]["-q"] == "--quantization"
    assert VLLM.flags.flags["--api-key"]["env"] == launch.SERVER_KEY_ENV == "VLLM_API_KEY"
    assert launch.SERVER_KEY_ENV in TABLE["environment"]


def test_the_spec_choices_the_builder_maps_are_vllms_own():
    for ours, theirs in launch.KV_CACHE_DTYPES.items():
        assert theirs in VLLM.flags.choices("--kv-cache-dtype"), ours
    for ours, theirs in launch.QUANTIZATIONS.items():
        assert theirs in VLLM.flags.choices("--quantization"), ours
    assert list(launch.LORA_RANKS) == [int(rank) for rank in VLLM.flags.choices("--max-lora-rank")]
    assert str(launch.CONTAINER_PORT) == VLLM.flags.flags["--port"]["default"]


def test_command_line_is_vllm_serve_then_the_model_for_both_runtimes():
    for docker in (False, True):
        command = VLLM.command_line(spec(), plan(docker=docker), port_shown="PORT")
        assert command[:3] == ["vllm", "serve", "/data/org--m/abc" if docker else "/srv/models/org--m/abc"]
        assert command[command.index("--port") + 1] == "PORT"
    # In a container the image's ENTRYPOINT is `vllm serve`: the arguments alone start with the model.
    assert VLLM.launcher_args(spec(), plan(docker=True))[0] == "/data/org--m/abc"
    assert VLLM.launcher == ("vllm", "serve") and VLLM.launcher_stand_in == "vllm_serve"
    assert VLLM.default_image == "vllm/vllm-openai:v0.34.0" and "@" not in VLLM.default_image


@pytest.mark.parametrize("docker", [False, True])
def test_adapters_are_served_by_name_at_the_path_the_server_sees(docker, tmp_path):
    (tmp_path / "wide").mkdir()
    (tmp_path / "wide" / "adapter_config.json").write_text(json.dumps({"r": 48, "lora_alpha": 16}))
    adapters = [
        {"name": "sql", "path": "/srv/models/adapters/sql"},
        {"name": "elsewhere", "path": "/opt/e"},  # outside the store: left for the server to report
    ]
    args = VLLM.launcher_args(spec(lora_adapters=adapters), plan(docker=docker))
    given = parse(args)
    assert "--enable-lora" in given and given["--max-loras"] == ["2"] and "--max-lora-rank" not in given
    assert given["--lora-modules"] == [
        "sql=/data/adapters/sql" if docker else "sql=/srv/models/adapters/sql",
        "elsewhere=/opt/e",
    ]
    # vLLM refuses an adapter of a higher rank than --max-lora-rank (16 by default): the next allowed rank.
    wide = VLLM.launcher_args(spec(lora_adapters=[{"name": "w", "path": str(tmp_path / "wide")}]), plan(docker=False))
    assert parse(wide)["--max-lora-rank"] == ["64"]


@pytest.mark.parametrize("native", [True, False])
def test_the_environment_is_allow_listed_and_carries_no_secret(native):
    extra = {
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "VLLM_API_KEY": SECRET,  # the key travels as a file (RunSpec.secret_env), never as a spec variable
        "HF_TOKEN": "hf_leak",
        "VLLM_DEBUG_LOG_API_SERVER_RESPONSE": "true",  # would log every answer
        "PORT": "1",
    }
    env = VLLM.launch_env(spec(extra_env=extra), gpu_indexes=[1, 2], native=native)
    fixed = {"HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "VLLM_NO_USAGE_STATS", "VLLM_DO_NOT_TRACK"}
    container = {"HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "VLLM_CACHE_ROOT", "VLLM_CONFIG_ROOT"}
    allowed = launch.ALLOWED_ENV | fixed | ({"CUDA_VISIBLE_DEVICES"} if native else container)
    assert set(env) <= allowed, set(env) - allowed
    assert SECRET not in env.values() and "hf_leak" not in env.values()
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True" and env["VLLM_LOGGING_LEVEL"] == "WARNING"
    assert env.get("CUDA_VISIBLE_DEVICES") == ("1,2" if native else None)
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    # Every vLLM variable the console sets or allows is one vLLM 0.34 reads.
    named = {name for name in allowed if name.startswith("VLLM_")}
    assert named <= set(TABLE["environment"]), named - set(TABLE["environment"])
    assert not {"VLLM_API_KEY", "VLLM_DEBUG_LOG_API_SERVER_RESPONSE", "VLLM_SERVER_DEV_MODE"} & launch.ALLOWED_ENV
    # A level that logs request details is dropped even from a spec saved before the check.
    debug = VLLM.launch_env(spec(extra_env={"VLLM_LOGGING_LEVEL": "debug"}), gpu_indexes=[0], native=native)
    assert "VLLM_LOGGING_LEVEL" not in debug


def test_a_cpu_server_sees_no_gpu_and_names_the_cpu_platform():
    env = VLLM.launch_env(spec(device="cpu"), gpu_indexes=[], native=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["VLLM_TARGET_DEVICE"] == "cpu"
    assert "VLLM_TARGET_DEVICE" not in VLLM.launch_env(spec(), gpu_indexes=[0], native=True)


class VllmRoutes(BaseHTTPRequestHandler):
    """vLLM 0.34's answers: /health and /version open, /v1/models behind the API key."""

    key = "k-123"
    version: dict = {"version": "0.34.0"}

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, None)
        if self.path == "/version":
            return self._send(200, self.version)
        if self.path == "/v1/models":
            if self.headers.get("Authorization") != f"Bearer {self.key}":
                return self._send(401, {"error": "Unauthorized"})
            return self._send(200, {"object": "list", "data": [
                {"id": "meta-llama/Llama-3.1-8B-Instruct", "object": "model", "owned_by": "vllm",
                 "root": "/data/org--m/abc", "parent": None, "max_model_len": 8192, "permission": []},
                {"id": "sql", "object": "model", "owned_by": "vllm", "root": "/data/adapters/sql",
                 "parent": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": None, "permission": []},
            ]})  # fmt: skip
        return self._send(404, {"detail": "Not Found"})

    def _send(self, status: int, body):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def vllm_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), VllmRoutes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    VllmRoutes.version = {"version": "0.34.0"}


def test_info_is_read_from_v1_models_and_version(vllm_server):
    info = VLLM.info(vllm_server, key="k-123")
    assert info == {
        "model_id": "meta-llama/Llama-3.1-8B-Instruct",
        "served_model_name": "meta-llama/Llama-3.1-8B-Instruct",
        "model_path": "/data/org--m/abc",
        "max_model_len": 8192,
        "max_total_tokens": 8192,
        "version": "0.34.0",
        "adapters": ["sql"],
        "served_by": "vllm",
    }
    assert VLLM.server_name(info) == "vLLM 0.34.0"
    assert VLLM.info(vllm_server, key="wrong") is None  # the key is required on /v1
    assert VLLM.health(vllm_server) is True
    assert VLLM.info("http://127.0.0.1:1") is None and VLLM.health("http://127.0.0.1:1", timeout=0.5) is False


def test_the_development_server_is_named_as_such(vllm_server):
    VllmRoutes.version = {"version": "0.34.0", "served_by": launch.DEVELOPMENT_SERVER}
    info = VLLM.info(vllm_server, key="k-123")
    assert VLLM.server_name(info) == "vllm_serve.py 0.34.0"


def test_metrics_and_memory_are_vllms():
    assert VLLM.metric_names and all(name.startswith("vllm:") for name in VLLM.metric_names)
    assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc"} <= set(VLLM.metric_names)
    assert VLLM.memory.reserves and VLLM.memory.default_utilization == launch.DEFAULT_GPU_MEMORY_UTILIZATION
    assert VLLM.rules.rules and VLLM.native_generate_routes is False and set(BACKENDS) == {"tgi", "vllm"}


BASE = {
    "quantize": "",
    "dtype": "",
    "kv_cache_dtype": "",
    "device": "gpu",
    "num_shard": None,
    "gpu_indexes": [],
    "extra_env": {},
}
LLAMA = {"num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192}


@pytest.mark.parametrize(
    ("values", "checkpoint", "field"),
    [
        ({"quantize": "bitsandbytes"}, {}, "quantize"),  # TGI's, not vLLM 0.34's
        ({"quantize": "marlin"}, {"quantization": "gptq"}, "quantize"),
        ({"quantize": "awq"}, {"quantization": None}, "quantize"),  # needs an AWQ checkpoint
        ({"quantize": "fp8"}, {"quantization": "gptq"}, "quantize"),  # already quantized otherwise
        ({"kv_cache_dtype": "int8"}, {}, "kv_cache_dtype"),
        ({"gpu_memory_utilization": 1.5}, {}, "gpu_memory_utilization"),
        ({"max_num_seqs": 256, "max_num_batched_tokens": 128}, {}, "max_num_batched_tokens"),
        ({"num_shard": 3}, {"config": LLAMA}, "num_shard"),
        ({"gpu_indexes": [0, 1, 2]}, {"config": LLAMA}, "gpu_indexes"),
        ({"max_model_len": 16384}, {"config": LLAMA}, "max_model_len"),
        ({"extra_env": {"VLLM_API_KEY": "x"}}, {}, "extra_env"),
        ({"extra_env": {"VLLM_LOGGING_LEVEL": "DEBUG"}}, {}, "extra_env"),
    ],
)
def test_spec_checks_refuse_with_the_field_at_fault(values, checkpoint, field):
    with pytest.raises(SpecError) as refused:
        VLLM.check_spec({**BASE, **values}, checkpoint)
    assert refused.value.field == field and refused.value.message


@pytest.mark.parametrize(
    ("values", "checkpoint"),
    [
        ({"quantize": "awq"}, {"quantization": "awq"}),
        ({"quantize": "fp8"}, {"quantization": None, "config": LLAMA}),
        ({"quantize": ""}, {"quantization": "gptq"}),  # vLLM reads the method from the checkpoint
        ({"kv_cache_dtype": "fp8_e4m3fn", "gpu_memory_utilization": 0.95}, {}),
        ({"num_shard": 4, "max_model_len": 8192}, {"config": LLAMA}),
        ({"num_shard": 3, "device": "cpu"}, {"config": LLAMA}),
        ({"max_model_len": 16384, "extra_env": {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}}, {"config": LLAMA}),
        ({"max_num_seqs": 64, "max_num_batched_tokens": 64, "extra_env": {"VLLM_LOGGING_LEVEL": "info"}}, {}),
    ],
)
def test_spec_checks_pass_what_vllm_takes(values, checkpoint):
    VLLM.check_spec({**BASE, **values}, checkpoint)


def test_request_lines_are_masked_and_the_rest_is_shown():
    lines = [
        "(APIServer pid=7) INFO 12-05 10:00:01 [api_server.py:1] Starting vLLM server on http://0.0.0.0:8000",
        "(APIServer pid=7) INFO 12-05 10:00:02 [request_logger.py:66] Received request cmpl-1: params: "
        "SamplingParams(n=1, stop=['secret stop'])",
        "(APIServer pid=7) DEBUG 12-05 10:00:02 [request_logger.py:56] Request cmpl-1 details: prompt: 'my secret'",
        "(APIServer pid=7) INFO 12-05 10:00:03 [request_logger.py:119] Generated response cmpl-1 (streaming "
        "complete): output: 'the answer', finish_reason: stop",
        '(APIServer pid=7) INFO:     127.0.0.1:5 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
    ]
    masked, carry = VLLM.mask_request_content(lines)
    assert carry is False and masked[0] == lines[0] and masked[4] == lines[4]
    text = "\n".join(masked)
    assert "secret" not in text and "the answer" not in text and text.count("[masked: request content]") == 3
    assert "Received request cmpl-1: [masked" in masked[1]
