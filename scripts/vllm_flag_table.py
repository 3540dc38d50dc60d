"""Write workers/jobs/flags/vllm.json from an installed vLLM: the flags `vllm serve` really parses.

vLLM builds its CLI from config dataclasses at run time, so the table is read off the parser itself rather than
copied from docs. Run it with a vLLM release on the path (the GPU wheel's Python files are enough; on a machine
without a GPU set VLLM_TARGET_DEVICE=cpu so the parser can compute its defaults):

    VLLM_TARGET_DEVICE=cpu python scripts/vllm_flag_table.py [the .whl it came from] > workers/jobs/flags/vllm.json

Not used by the console or its tests; it documents where the table came from and regenerates it for a new pin.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from typing import Any

import vllm
import vllm.envs as envs
from vllm.entrypoints.common.cli_args import make_arg_parser
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
from vllm.utils.argparse_utils import FlexibleArgumentParser

# The flags that read a variable when not given (vLLM's api-server middleware: `args.api_key or [VLLM_API_KEY]`).
FLAG_ENV = {"--api-key": "VLLM_API_KEY"}


def value_type(fn: Any, depth: int = 0) -> str:
    """What a flag's argparse `type` parses: int, float, str or json (vLLM wraps them in closures)."""
    if fn is None or fn is str:
        return "str"
    if fn in (int, float):
        return fn.__name__
    name = getattr(fn, "__name__", "")
    if name.startswith("human_readable_int"):
        return "int"  # also takes 1k / 1K / 25.6k (and -1 / auto where the name says so)
    if name in ("loads", "parse_dataclass", "union_dict_and_str"):
        return "json"
    for cell in getattr(fn, "__closure__", None) or ():
        inner = cell.cell_contents
        if callable(inner) and depth < 4:
            return value_type(inner, depth + 1)
    return "str"


def as_text(value: Any) -> str | None:
    """The default as text the way it reads on a command line; None for unset or computed defaults."""
    if value is None or value is argparse.SUPPRESS:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(item, (int, float, str)) for item in value):
        return json.dumps(list(value))
    return None  # a config object: vLLM fills it from its own fields


def main() -> None:
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    flags, short = [], {}
    for action in parser._actions:
        options = [opt for opt in action.option_strings]
        if not options or action.dest == "help":
            continue
        longs = [opt for opt in options if opt.startswith("--")]
        name = "--" + action.dest.replace("_", "-") if "--" + action.dest.replace("_", "-") in longs else longs[0]
        for opt in options:
            if not opt.startswith("--"):
                short[opt] = name
        negative = sorted(getattr(action, "negative_option_strings", ()) or ())
        aliases = sorted(opt for opt in longs if opt != name and opt not in negative)
        if action.nargs == 0:
            kind = "bool"
        elif isinstance(action, argparse._AppendAction):
            kind = "repeat"
        elif action.nargs in ("+", "*"):
            kind = "list"
        else:
            kind = "value"
        # argparse checks `choices`; a Literal that also takes any string lists its values as the metavar, and
        # --quantization is checked against QUANTIZATION_METHODS when the model config is built. Both are refused
        # at startup, not by the parser ("checked": "startup").
        checked = "parser"
        choices = [str(choice) for choice in (action.choices or [])]
        if not choices and isinstance(action.metavar, (list, tuple)):
            choices, checked = [str(choice) for choice in action.metavar], "startup"
        if name == "--quantization":
            choices, checked = list(QUANTIZATION_METHODS), "startup"
        item = {
            "name": name,
            "env": FLAG_ENV.get(name),
            "default": as_text(action.default),
            "kind": kind,
            "choices": choices,
            "type": "bool" if kind == "bool" else value_type(action.type),
        }
        if choices and checked != "parser":
            item["checked"] = checked
        if aliases:
            item["aliases"] = aliases
        if negative:
            item["negative"] = negative
        if action.help == argparse.SUPPRESS:
            item["hidden"] = True
        flags.append(item)
    flags.sort(key=lambda flag: flag["name"])
    variables = sorted(name for name in envs.environment_variables)
    table = {
        "backend": "vllm",
        "program": "vllm",
        "subcommand": "serve",
        "release": vllm.__version__,
        "commit": getattr(vllm, "__commit__", None) or _commit(),
        "source": (
            f"vllm {vllm.__version__} (PyPI wheel), read off the parser `vllm serve` builds "
            "(with VLLM_TARGET_DEVICE=cpu so it builds without a GPU): "
            "vllm/entrypoints/common/cli_args.py make_arg_parser (FrontendArgs + AsyncEngineArgs.add_cli_args in "
            "vllm/engine/arg_utils.py); variables from vllm/envs.py; written by scripts/vllm_flag_table.py"
        ),
        "wheel": _wheel(sys.argv[1]) if len(sys.argv) > 1 else None,
        "positional": ["model_tag"],
        "kinds": {
            "value": "one value after the flag",
            "bool": "a switch; `negative` lists the spellings that turn it off",
            "list": "one or more values after one flag",
            "repeat": "the flag repeats, one value each",
        },
        "checked": {
            "parser": "argparse refuses a value outside `choices` (the default)",
            "startup": "vLLM refuses a value outside `choices` when it builds its config, after the parser",
        },
        "short": dict(sorted(short.items())),
        "environment": variables,
        "flags": flags,
    }
    json.dump(table, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _wheel(path: str) -> str:
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return f"{path.rsplit('/', 1)[-1]} sha256:{digest}"


def _commit() -> str | None:
    try:
        from vllm._version import __commit_id__

        return re.sub(r"^g", "", __commit_id__ or "") or None
    except ImportError:
        return None


if __name__ == "__main__":
    main()
