"""Which of TGI's log lines carry what a request sent, and masking them (applied when a log is read, never stored).

TGI's router (router/src/server.rs) logs, per request:
- at info, `Success` inside the span `generate{parameters=GenerateParameters { ... stop: [...], grammar: ... }}`
  (the chat route records the same struct as a quoted string): stop sequences, grammars and adapter ids;
- at debug, `Input: <the prompt>`, `Output: <the generated text>` and `Token: Token { ... text: ... }`;
- an error during a request (a CUDA OOM at generation) inside the same span.
The text format is tracing-subscriber's (`LEVEL span{fields}: target: file:line: message`), sometimes in ANSI
colours; `--json-output` puts the span fields in "span"/"spans" and the message in "message". A prompt or an
output with newlines goes on over the following lines, which carry no record prefix: they are masked until the
next record starts (`carry` says a batch begins inside such content).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MASK = "[masked: request content]"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A message that is request content from its first word on (the router's debug lines).
_CONTENT_MESSAGE = re.compile(r"(?P<head>(?:^|: )(?:Input|Output|Token): ).*$")
_JSON_CONTENT_MESSAGE = re.compile(r'(?P<head>"message":\s*"(?:Input|Output|Token): )(?:[^"\\]|\\.)*"')
_JSON_PARAMETERS = re.compile(r'(?P<head>"parameters":\s*)"(?:[^"\\]|\\.)*"')
_PARAMETERS = "parameters="
_NEXT_FIELD = re.compile(r" [a-z_]+=")
# A new record: a timestamped line (text mode), a JSON line, or the launcher's and router's final `Error: ...`.
_RECORD_START = re.compile(r"^(?:\d{4}-\d\d-\d\dT\d\d:\d\d|\{|Error: )")


def mask_lines(lines: Sequence[str], *, carry: bool = False) -> tuple[list[str], bool]:
    """Each line masked; returns the lines and whether the last one leaves request content open (`carry`)."""
    shown = []
    for line in lines:
        plain = _ANSI.sub("", line)
        if not _RECORD_START.match(plain):
            shown.append(MASK if carry else line)
            continue
        masked = mask_line(plain)
        carry = not plain.startswith("{") and _CONTENT_MESSAGE.search(_mask_parameters(plain)) is not None
        shown.append(masked if masked != plain else line)
    return shown, carry


def mask_line(line: str) -> str:
    """The line with every part that carries request content replaced by MASK (the rest kept for diagnosis)."""
    if "Input: " not in line and "Output: " not in line and "Token: " not in line and "parameters" not in line:
        return line  # the common case: launch and warm-up lines
    line = _ANSI.sub("", line)
    if line.lstrip().startswith("{"):
        line = _JSON_PARAMETERS.sub(lambda m: f'{m["head"]}"{MASK}"', line)
        return _JSON_CONTENT_MESSAGE.sub(lambda m: f'{m["head"]}{MASK}"', line)
    line = _mask_parameters(line)
    return _CONTENT_MESSAGE.sub(lambda m: m["head"] + MASK, line, count=1)


def _mask_parameters(line: str) -> str:
    """Replace each `parameters=<value>` span field: a Debug struct (balanced braces and brackets, quoted strings
    skipped) or a quoted string."""
    out, start = [], 0
    while (found := line.find(_PARAMETERS, start)) != -1:
        value_at = found + len(_PARAMETERS)
        out.append(line[start:value_at] + MASK)
        start = _value_end(line, value_at)
    out.append(line[start:])
    return "".join(out)


def _value_end(line: str, at: int) -> int:
    """Where a span field's value that starts at `at` ends (a space or `}` outside brackets and quotes)."""
    depth, quoted, index = 0, False, at
    while index < len(line):
        char = line[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char in "{[(":
            depth += 1
        elif char in "}])":
            if depth == 0:
                return index  # the end of the span's field list
            depth -= 1
        elif char == " " and depth == 0 and _NEXT_FIELD.match(line, index):
            # "GenerateParameters { ..." has a space before its brace: a value ends at a space only when the
            # next field (name=) follows.
            return index
        index += 1
    return index
