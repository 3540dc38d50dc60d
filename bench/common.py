"""Helpers for benchmarks: Django on a scratch database, a real worker, the result line format."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    comparison: str  # "<=" or ">="
    target: float
    note: str = ""

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.comparison == "<=" else self.value >= self.target

    def line(self) -> str:
        note = f" [{self.note}]" if self.note else ""
        status = "met" if self.met else "MISSED"
        goal = f"(goal {self.comparison} {self.target:g})"
        # Whole counts (streams, rows) as they are: 1000, not 1e+03.
        value = f"{self.value:.0f}" if float(self.value).is_integer() and abs(self.value) < 1e9 else f"{self.value:.3g}"
        return f"bench {self.name}: {value} {self.unit} {goal} {status}{note}"


def setup_django() -> None:
    """Django on a scratch SQLite database under DATA_DIR (unless DATABASE_URL is set)."""
    data_dir = Path(os.environ.setdefault("DATA_DIR", str(ROOT / ".data-test")))
    data_dir.mkdir(parents=True, exist_ok=True)
    # What the caller gave, for benchmarks that run pytest in a subprocess (bench_faults).
    os.environ.setdefault("BENCH_GIVEN_DATABASE_URL", os.environ.get("DATABASE_URL", ""))
    if not os.environ.get("DATABASE_URL"):
        bench_db = data_dir / "bench.sqlite3"
        bench_db.unlink(missing_ok=True)
        os.environ["DATABASE_URL"] = f"sqlite:///{bench_db}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def start_worker() -> subprocess.Popen:
    from console.celery import app

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "console",
            "worker",
            "--pool",
            "solo",
            "-l",
            "WARNING",
            "-n",
            f"bench-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if app.control.ping(timeout=0.5):
            return process
    process.kill()
    raise RuntimeError("the benchmark's Celery worker did not start")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_pytest(marker: str, env: dict | None = None) -> dict[str, bool]:
    """The tests marked `marker`, in a subprocess on the database the caller gave (not the benchmarks' scratch
    one); each test's node id -> whether it passed."""
    import xml.etree.ElementTree as ET

    report = ROOT / "test-artifacts" / f"bench-{marker}.xml"
    report.parent.mkdir(exist_ok=True)
    environment = {**os.environ, "DATABASE_URL": os.environ.get("BENCH_GIVEN_DATABASE_URL", ""), **(env or {})}
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-m", marker, f"--junitxml={report}"],
        cwd=ROOT,
        env=environment,
        check=False,
    )
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314
        name = f"{case.get('classname')}::{case.get('name')}"
        outcomes[name] = not any(child.tag in ("failure", "error", "skipped") for child in case)
    return outcomes
