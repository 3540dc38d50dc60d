"""Which of vLLM's log lines carry what a request sent, and masking them (applied when a log is read, never stored).

vLLM 0.34 logs requests only with --enable-log-requests, which the console never passes, through
vllm/entrypoints/serve/utils/request_logger.py: `Received request <id>: params: ...`, at DEBUG
`Request <id> details: prompt: '...'` and `Request <id> JSON body: {...}`, and with --enable-log-outputs
`Generated response <id>: output: '...'`. Each is one line (prompts and outputs are logged as repr), so the rest of
such a line is masked and nothing carries over to the next. Every other line (startup, engine, access lines that
name only a route) is shown as it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MASK = "[masked: request content]"

_CONTENT = re.compile(
    r"(?P<head>(?:Received request|Generated response|Request) \S+?(?: \(streaming (?:delta|complete)\))?"
    r"(?: details| JSON body)?: ).*$"
)


def mask_line(line: str) -> str:
    return _CONTENT.sub(lambda match: match.group("head") + MASK, line)


def mask_lines(lines: Sequence[str], *, carry: bool = False) -> tuple[list[str], bool]:
    """The lines with request content masked; vLLM's request lines are single lines, so nothing stays open."""
    return [mask_line(line) for line in lines], False
