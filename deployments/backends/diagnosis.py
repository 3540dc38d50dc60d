"""Failure diagnosis from a server's log: the engine every backend's rule book runs on.

A rule book (a backend's, e.g. deployments/backends/tgi/diagnosis.py) is a table of rules matched in order,
so a specific cause wins over a generic one that shows up in the same log; each gives a stable cause id, a
title, the evidence lines and a next step. Context checks read facts from outside the log (the container
runtime's OOM kill, a missing image, the console's own deadline).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.utils.functional import Promise, lazy

# AWS CloudWatch (SageMaker, ECS) writes the escape byte of a colour code as the text "#033".
ANSI = re.compile(r"(?:\x1b|#033)\[[0-9;]*m")
# `docker logs -t` puts a timestamp before each JSON line.
JSON_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\dT\S+\s+)?(?P<json>\{.*\})\s*$")
# The launcher's (and router's) exit reason, printed last to stderr: the coarse class.
EXIT_REASON = re.compile(r"^\s*Error: ")
ERROR_LINE = re.compile(r"\bERROR\b|^\s*Error: ")
MAX_EVIDENCE = 10

# Context checks get (context, exit_code) and return a line of evidence when the caller's facts show the cause.
ContextCheck = Callable[[dict[str, Any], int | None], str | None]


@dataclass(frozen=True)
class Diagnosis:
    """Why a deployment failed: `cause` is a stable id; `title` and `next_step` are translated lazily."""

    cause: str
    title: str
    evidence: list[str]
    next_step: str

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON and the database (lazy text is rendered in the active language)."""
        return {
            "cause": self.cause,
            "title": str(self.title),
            "evidence": [str(line) for line in self.evidence],
            "next_step": str(self.next_step),
        }


def _interpolate(template: Promise, params: dict[str, str]) -> str:
    return str(template) % params


# Stays lazy, so a worker's diagnosis is read in the language of whoever looks at it.
_lazy_interpolate = lazy(_interpolate, str)


@dataclass(frozen=True)
class Rule:
    """One cause: lines that prove it, extra lines worth showing once it matched, and what to say."""

    cause: str
    patterns: tuple[re.Pattern[str], ...]
    title: Promise
    next_step: Promise
    also: tuple[re.Pattern[str], ...] = ()
    numbers: re.Pattern[str] | None = None  # named groups for title_numbers, read from the evidence
    title_numbers: Promise | None = None
    context: ContextCheck | None = None
    cleared_by: tuple[re.Pattern[str], ...] = ()  # lines showing the trouble was overcome later in the same log
    next_step_cpu: Promise | None = None  # what to say instead for a deployment on CPU (no GPU advice there)

    def evidence(self, lines: list[str], context: dict[str, Any], exit_code: int | None) -> list[str]:
        """The lines proving this cause, with the supporting ones, in log order; empty when it does not apply."""
        proof = [i for i, line in enumerate(lines) if any(p.search(line) for p in self.patterns)]
        fact = self.context(context, exit_code) if self.context else None
        if not proof and not fact:
            return []
        if not fact and any(p.search(line) for line in lines for p in self.cleared_by):
            return []
        # Proof lines take the few places first, so chatty supporting lines cannot crowd them out.
        proven = set(proof)
        support = [i for i, line in enumerate(lines) if i not in proven and any(p.search(line) for p in self.also)]
        chosen = _unique([lines[i] for i in sorted((proof + support)[:MAX_EVIDENCE])])
        return [fact, *chosen] if fact else chosen

    def title_for(self, evidence: list[str]) -> str:
        if self.numbers is not None and self.title_numbers is not None:
            for line in evidence:
                if match := self.numbers.search(line):
                    return _lazy_interpolate(self.title_numbers, match.groupdict())
        return self.title


def patterns(*expressions: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in expressions)


def oom_killed(context: dict[str, Any], exit_code: int | None) -> str | None:
    if not context.get("oom_killed"):
        return None
    code = "" if exit_code is None else f", exit code {exit_code}"
    return f"Container state: OOMKilled=true{code}"


def image_missing(context: dict[str, Any], exit_code: int | None) -> str | None:
    if not context.get("image_missing"):
        return None
    image = context.get("image")
    return f"Docker: image not found{f' ({image})' if image else ''}"


def deadline_passed(context: dict[str, Any], exit_code: int | None) -> str | None:
    # The same words the reconciler writes into the log, so one pattern reads both.
    return f"Deadline passed while {context['deadline']}" if context.get("deadline") else None


def log_lines(lines: Iterable[str]) -> list[str]:
    """Plain message lines: ANSI codes stripped, JSON lines reduced to their message, multi-line messages split."""
    out: list[str] = []
    for chunk in lines:
        for physical in ANSI.sub("", chunk).splitlines():
            out.extend(ANSI.sub("", _message(physical)).splitlines())
    return [line.rstrip() for line in out if line.strip()]


def _message(line: str) -> str:
    """The message of a `--json-output` line (launcher: fields.message; router: message); other lines as they are."""
    match = JSON_LINE.match(line)
    if not match:
        return line
    try:
        record = json.loads(match["json"])
    except ValueError:
        return line
    if not isinstance(record, dict):
        return line
    fields = record.get("fields")
    message = fields.get("message") if isinstance(fields, dict) else record.get("message")
    return message if isinstance(message, str) else line


def _unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


@dataclass(frozen=True)
class RuleBook:
    """A backend's rules, in order, and what to say when none matches."""

    rules: tuple[Rule, ...]
    unknown_title: Promise
    unknown_title_exit: Promise  # with %(code)s
    unknown_next_step: Promise

    @property
    def causes(self) -> tuple[str, ...]:
        return (*(rule.cause for rule in self.rules), "unknown")


def diagnose(
    lines: Iterable[str], book: RuleBook, *, exit_code: int | None = None, context: dict | None = None
) -> Diagnosis:
    """Name the cause of a failed or crashed launch from its log and what the container runtime reported.

    `context` carries facts from outside the log: {"oom_killed": True}, {"image_missing": True, "image": ...},
    {"deadline": "<state>"} when the console gave up waiting, {"device": "cpu"} for a deployment without GPUs.
    """
    plain = log_lines(lines)
    facts = context or {}
    exit_reasons = [line for line in plain if EXIT_REASON.search(line)]
    for rule in book.rules:
        evidence = rule.evidence(plain, facts, exit_code)
        if evidence:
            # The exit reason is the coarse class: worth showing next to the specific lines.
            reasons = [line for line in exit_reasons if line not in evidence][-2:]
            evidence = evidence[: MAX_EVIDENCE - len(reasons)] + reasons
            on_cpu = facts.get("device") == "cpu" and rule.next_step_cpu is not None
            return Diagnosis(
                rule.cause, rule.title_for(evidence), evidence, rule.next_step_cpu if on_cpu else rule.next_step
            )
    if exit_code is None:
        title = book.unknown_title
    else:
        title = _lazy_interpolate(book.unknown_title_exit, {"code": str(exit_code)})
    errors = [line for line in plain if ERROR_LINE.search(line)][-MAX_EVIDENCE:]
    return Diagnosis("unknown", title, errors, book.unknown_next_step)
