"""`vllm serve`'s flags for the pinned vLLM release, read from workers/jobs/flags/vllm.json.

One table for two readers: vllm_serve.py builds its command line from it (so an entrypoint named `vllm` can hand
`serve <model> ...` over unchanged), and the console's vLLM backend reads the same file (every flag it emits must
be a real `vllm serve` flag). Imports nothing of the console.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Flag:
    name: str  # the long flag, e.g. "--max-model-len"
    env: str | None  # the variable vLLM reads when the flag is absent, where there is one (VLLM_API_KEY)
    default: str | None  # vLLM's default as text ("8000", "false", '["*"]'); None: unset or computed
    kind: str  # "value", "bool" (a switch), "list" (several values after one flag) or "repeat"
    choices: tuple[str, ...] = ()
    type: str = "str"  # what a value parses as: str, int, float, json or bool
    negative: tuple[str, ...] = ()  # the spellings that turn a switch off (--no-enable-lora, --disable-lora)
    aliases: tuple[str, ...] = ()  # other long spellings of the same flag
    checked: str = "parser"  # where vLLM refuses a value outside `choices`: the parser, or its config at startup

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


TABLE = json.loads(resources.files("workers.jobs.flags").joinpath("vllm.json").read_text(encoding="utf-8"))
RELEASE: str = TABLE["release"]
FLAGS: tuple[Flag, ...] = tuple(
    Flag(
        item["name"],
        item.get("env"),
        item.get("default"),
        item.get("kind", "value"),
        tuple(item.get("choices") or ()),
        item.get("type", "str"),
        tuple(item.get("negative") or ()),
        tuple(item.get("aliases") or ()),
        item.get("checked", "parser"),
    )
    for item in TABLE["flags"]
)
BY_NAME: dict[str, Flag] = {flag.name: flag for flag in FLAGS}
SHORT: dict[str, str] = dict(TABLE.get("short") or {})
