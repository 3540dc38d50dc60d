"""The fault matrix's common frame: how long each fault lasts, how often it repeats, and the record
each fault test leaves for the reliability report.

A fault test runs `repetitions()` trials (1 in CI, 20 under `make bench`, which sets FAULT_MODE=bench),
each with a random moment of injection, records one `FaultReport` and then asserts that every trial
survived. `bench/bench_faults.py` runs the fault tests under FAULT_MODE=bench and turns the records
into the report's lines.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPORT_DIR = Path(os.environ.get("FAULT_REPORT_DIR", ROOT / "test-artifacts" / "faults"))


@dataclass(frozen=True)
class Timings:
    mode: str
    repetitions: int
    outage_s: float  # how long a service stays down or unreachable (F5, PostgreSQL, Redis)
    host_offline_s: float  # HOST_OFFLINE_SECONDS for the processes under test
    agent_network_loss_s: float  # how long an agent is cut from Redis and PostgreSQL


CI = Timings(mode="ci", repetitions=1, outage_s=10, host_offline_s=5, agent_network_loss_s=20)
BENCH = Timings(mode="bench", repetitions=20, outage_s=60, host_offline_s=5, agent_network_loss_s=120)


def timings() -> Timings:
    """CI's shortened timings unless FAULT_MODE=bench; FAULT_REPETITIONS overrides the count."""
    base = BENCH if os.environ.get("FAULT_MODE") == "bench" else CI
    if os.environ.get("FAULT_REPETITIONS"):
        return Timings(**{**asdict(base), "repetitions": int(os.environ["FAULT_REPETITIONS"])})
    return base


def repetitions() -> range:
    return range(timings().repetitions)


def random_delay(low: float, high: float) -> float:
    """A random moment of injection (seconds), so repeated trials hit different phases of the work."""
    return random.uniform(low, high)


@dataclass
class Trial:
    survived: bool
    recover_s: float | None = None  # fault cleared -> the promise holds again; None where nothing recovers
    detail: str = ""


@dataclass
class FaultReport:
    key: str  # "F4", "disk-full", ...
    title: str
    must_hold: str
    trials: list[Trial] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)  # measurements beyond survival, as bench.common.Figure's fields

    def figure(self, name: str, value: float, unit: str, comparison: str, target: float, note: str = "") -> None:
        """A measurement the reliability report lists with its goal (`make bench` makes it a Figure)."""
        self.figures.append(
            {"name": name, "value": value, "unit": unit, "comparison": comparison, "target": target, "note": note}
        )

    @property
    def injected(self) -> int:
        return len(self.trials)

    @property
    def survived(self) -> int:
        return sum(trial.survived for trial in self.trials)

    @property
    def recover_max_s(self) -> float | None:
        times = [trial.recover_s for trial in self.trials if trial.recover_s is not None]
        return max(times) if times else None

    def failures(self) -> list[str]:
        return [f"trial {n + 1}: {trial.detail}" for n, trial in enumerate(self.trials) if not trial.survived]

    def save(self) -> Path:
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        path = REPORT_DIR / f"{self.key}.json"
        data = {
            "key": self.key,
            "title": self.title,
            "must_hold": self.must_hold,
            "mode": timings().mode,
            "injected": self.injected,
            "survived": self.survived,
            "recover_max_s": self.recover_max_s,
            "trials": [asdict(trial) for trial in self.trials],
            "figures": self.figures,
        }
        path.write_text(json.dumps(data, indent=2))
        return path

    def assert_all_survived(self) -> None:
        assert self.survived == self.injected, "\n".join(self.failures())


@contextmanager
def fault_report(key: str, title: str, must_hold: str) -> Iterator[FaultReport]:
    """Collect trials; on leaving, save the record (even when a trial raised) and assert every trial held."""
    report = FaultReport(key=key, title=title, must_hold=must_hold)
    try:
        yield report
    finally:
        report.save()
    report.assert_all_survived()


def run_trial(report: FaultReport, body: Callable[[], Trial]) -> Trial:
    """One trial; an exception inside it counts as not survived, with the exception as the detail."""
    try:
        trial = body()
    except Exception as error:  # the record must say which trial failed and why, then the test fails
        trial = Trial(survived=False, detail=f"{type(error).__name__}: {error}")
    report.trials.append(trial)
    return trial


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until predicate() is truthy, or None after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    return None
