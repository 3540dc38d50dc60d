"""vllm_serve.py's command line: `vllm serve`'s, built from the pinned release's flag table (vllm_flags.py) and
parsed as vLLM's FlexibleArgumentParser parses it (underscores or dashes, short forms, `--no-`/`--disable-`
negatives, human-readable integers such as 1k, `--model` for the positional model). Imports nothing from Django.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass

from workers.jobs.vllm_flags import FLAGS, SHORT
from workers.jobs.vllm_serve_checks import log


@dataclass(frozen=True)
class LoraModule:
    """One --lora-modules entry: the name requests use, its directory and the served model it adapts."""

    name: str
    path: str
    base_model_name: str | None = None


# What the server acts on; every other flag of the table is accepted and named in a warning when given.
ACTED_ON = frozenset(
    {
        "model", "served_model_name", "host", "port", "api_key", "dtype", "max_model_len", "gpu_memory_utilization",
        "max_num_seqs", "max_num_batched_tokens", "enable_lora", "lora_modules", "max_lora_rank", "max_loras",
        "trust_remote_code", "tokenizer", "revision", "download_dir", "tensor_parallel_size", "quantization",
        "block_size", "uvicorn_log_level", "disable_uvicorn_access_log", "disable_log_stats", "max_logprobs",
        "generation_config", "chat_template", "seed", "shutdown_timeout", "disable_access_log_for_endpoints",
        "kv_cache_memory_bytes",
    }
)  # fmt: skip


HUMAN = re.compile(r"^(-?\d+(?:\.\d+)?)([kKmMgG]?)$")


def human_int(value: str) -> int:
    """vLLM's human-readable integers: 1k = 1000, 1K = 1024, likewise m/M and g/G."""
    match = HUMAN.match(str(value).strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid int value: '{value}'")
    number, unit = match.groups()
    scale = {"": 1, "k": 10**3, "K": 2**10, "m": 10**6, "M": 2**20, "g": 10**9, "G": 2**30}[unit]
    return int(float(number) * scale)


TYPES = {"int": human_int, "float": float}


def _switch_default(value: str | None) -> bool | None:
    return None if value is None else value.strip().lower() == "true"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm serve", usage="vllm serve [model_tag] [options]")
    parser.add_argument("model_tag", nargs="?", default=None)
    for flag in FLAGS:
        names = [flag.name, *flag.aliases] + [short for short, long in SHORT.items() if long == flag.name]
        if flag.kind == "bool":
            default = _switch_default(flag.default)
            parser.add_argument(*names, dest=flag.dest, action="store_const", const=True, default=default)
            if flag.negative:
                parser.add_argument(*flag.negative, dest=flag.dest, action="store_const", const=False)
            continue
        kwargs = {"dest": flag.dest, "default": flag.default, "type": TYPES.get(flag.type)}
        if flag.choices and flag.checked == "parser":
            kwargs["choices"] = [TYPES.get(flag.type, str)(choice) for choice in flag.choices]
        if flag.kind == "list":
            kwargs["nargs"] = "+"
        elif flag.kind == "repeat":
            kwargs["action"] = "append"
        parser.add_argument(*names, **kwargs)
    return parser


def _dashes(argv: list[str]) -> list[str]:
    """vLLM's parser takes `--max_model_len` for `--max-model-len` (the name, up to `=` or a `.`)."""
    return [re.sub(r"(?<=^--)[^.=]*", lambda m: m.group(0).replace("_", "-"), arg) for arg in argv]


def parse(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["serve"]:  # `vllm serve ...` through the shim, or only the arguments after it
        argv = argv[1:]
    args = build_parser().parse_args(_dashes(argv))
    args.model = args.model_tag or args.model
    return args


def non_default(args: argparse.Namespace) -> dict:
    """vLLM's "non-default args" line: what differs from the parser's defaults, the API key as ***."""
    defaults = vars(build_parser().parse_args([]))
    shown = {
        key: ("***" if key in ("api_key", "hf_token") else value)
        for key, value in vars(args).items()
        if key in defaults and defaults[key] != value
    }
    if "model_tag" in shown and "model" not in shown:
        shown["model"] = args.model
    return shown


def lora_modules(values: list[str] | None) -> list:
    """--lora-modules as vLLM's LoRAParserAction reads it: `name=path` or a JSON object per entry."""
    modules = []
    for item in values or []:
        if not item:
            continue
        if "=" in item and "," not in item:
            name, path = item.split("=", 1)
            modules.append(LoraModule(name, path))
            continue
        try:
            fields = json.loads(item)
            modules.append(LoraModule(fields.pop("name"), fields.pop("path"), fields.pop("base_model_name", None)))
        except ValueError:
            build_parser().error(f"Invalid JSON format for --lora-modules: {item}")
        except (KeyError, TypeError, AttributeError) as exc:
            build_parser().error(f"Invalid fields for --lora-modules: {item} - {exc}")
    return modules


def ignored(args: argparse.Namespace) -> None:
    defaults = vars(build_parser().parse_args([]))
    for flag in FLAGS:
        if flag.dest not in ACTED_ON and getattr(args, flag.dest) != defaults[flag.dest]:
            log(
                "WARNING",
                f"vllm_serve.py ignores {flag.name}: it has no effect on this development server",
                "vllm_serve.py:1",
            )
