"""`manage.py diagnose_log FILE [--json] [--backend tgi]`: the failure cause, evidence and next step of a launch log."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from deployments.backends import BACKENDS, get_backend
from deployments.backends.diagnosis import Diagnosis


def render_text(diagnosis: Diagnosis) -> str:
    """The cause id and title, the evidence lines indented, then the next step."""
    data = diagnosis.as_dict()
    lines = [f"{data['cause']}: {data['title']}", "", "Evidence:"]
    lines += [f"  {line}" for line in data["evidence"]] or ["  (no matching lines)"]
    lines += ["", "Next step:", f"  {data['next_step']}"]
    return "\n".join(lines)


class Command(BaseCommand):
    """Diagnose a failed or crashed TGI launch from its log (text or --json-output lines, ANSI codes allowed)."""

    help = "Read a TGI launch log and print the failure cause, the evidence lines and the next step."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help='the log file, or "-" to read standard input')
        parser.add_argument("--exit-code", type=int, help="the container's or launcher's exit status, if known")
        parser.add_argument("--json", action="store_true", help="print cause, title, evidence and next_step as JSON")
        parser.add_argument("--backend", choices=sorted(BACKENDS), default="tgi", help="whose rules read the log")

    def handle(self, *args: Any, **options: Any) -> None:
        """Finding a cause is a successful run: the exit status is 0 unless the log cannot be read."""
        text = self._read(options["file"])
        diagnosis = get_backend(options["backend"]).diagnose(text.splitlines(), exit_code=options["exit_code"])
        if options["json"]:
            self.stdout.write(json.dumps(diagnosis.as_dict(), indent=2, ensure_ascii=False))
        else:
            self.stdout.write(render_text(diagnosis))

    @staticmethod
    def _read(name: str) -> str:
        if name == "-":
            return sys.stdin.read()
        path = Path(name)
        if not path.is_file():
            raise CommandError(f"No such log file: {name}", returncode=2)
        # Logs can hold stray bytes (a killed process mid-write); they must not stop the diagnosis.
        return path.read_text(encoding="utf-8", errors="replace")
