"""text-generation-launcher's flags (TGI 3.3.x, `launcher/src/main.rs`), read from workers/jobs/flags/tgi.json.

One table for two readers: serve.py builds its command line from it (so a container entrypoint named
`text-generation-launcher` can hand its arguments to serve.py unchanged), and the console's TGI backend
reads the same file (every flag it emits must be a real launcher flag). Imports nothing of the console.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Flag:
    name: str  # the long flag, e.g. "--max-total-tokens"
    env: str | None  # the variable clap also reads (flag > env > default)
    default: str | None  # TGI's default as text; None: unset (computed or off)
    kind: str = "value"  # "value", "bool" (a switch; the env var takes true/false) or "repeat"
    choices: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


TABLE = json.loads(resources.files("workers.jobs.flags").joinpath("tgi.json").read_text(encoding="utf-8"))
FLAGS: tuple[Flag, ...] = tuple(
    Flag(item["name"], item["env"], item["default"], item["kind"], tuple(item["choices"])) for item in TABLE["flags"]
)
BY_NAME: dict[str, Flag] = {flag.name: flag for flag in FLAGS}
QUANTIZE_CHOICES = BY_NAME["--quantize"].choices
# Short forms the launcher also accepts.
SHORT: dict[str, str] = dict(TABLE["short"])
