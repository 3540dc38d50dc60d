"""Load: 50 locust users of the three roles (admin, engineer, auditor) over the main pages and API for 60 s, against
the console under daphne on loopback. Goals: failures (errors, non-200 answers, timeouts) at most 1 % of requests,
and locust's own exit code 0 (--exit-code-on-error 1). p95 per endpoint and role as info lines.

Options for a busy machine: BENCH_LOCUST_USERS (50), BENCH_LOCUST_SECONDS (60).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.common import Figure
from bench.locust_run import console_server, credentials, run_locust

USERS = int(os.environ.get("BENCH_LOCUST_USERS", "50"))
SECONDS = int(os.environ.get("BENCH_LOCUST_SECONDS", "60"))


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as work:
        log = Path(work) / "daphne.log"
        with console_server(log_path=log) as host:
            creds = credentials(Path(work) / "credentials.json")
            result = run_locust(host, creds, users=USERS, spawn_rate=10, seconds=SECONDS, work=Path(work))
        errors = [line for line in log.read_text(errors="replace").splitlines() if "Error:" in line]
    why = f"; the server's last error: {errors[-1][:200]}" if errors else ""
    figures = [
        Figure(
            "locust_failure_ratio",
            result.failure_ratio,
            "",
            "<=",
            0.01,
            f"{result.failures} of {result.requests:,} requests failed; {USERS} users of 3 roles for {SECONDS} s{why}",
        ),
        Figure("locust_exit_code", result.exit_code, "", "<=", 0, "locust --exit-code-on-error 1"),
    ]
    for endpoint in sorted(result.endpoints, key=lambda found: found.name):
        slug = endpoint.name.replace(" /", "_").strip("/").replace("/", "_").replace("__", "_") or "root"
        figures.append(
            Figure(
                f"locust_p95_{slug}",
                endpoint.p95_ms,
                "ms",
                ">=",
                0,
                f"{endpoint.name}: {endpoint.requests} requests, {endpoint.failures} failed (info)",
            )
        )
    return figures
