"""API lists at scale: each list's p95 at 100k deployments (10k of them granted to a grant-only user), 100k jobs,
1M log lines and 1M audit events, against its p95 at 100 of each, and the queries a request asks at both sizes.

The two sizes live in two databases (the bench's, grown to the large size, and a scratch one beside it at the small
size), measured in alternating rounds on one connection switched between them: a busy neighbour slows both sizes
alike instead of whichever ran while it was busy.

Options for a busy machine: BENCH_SCALE_LARGE (the large size, 100000 by default), BENCH_SCALE_ROUNDS (alternations,
8), BENCH_SCALE_REPETITIONS (requests per list, size and round, 6).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import Figure
from bench.scale_lists import Measured, measure, seed

SMALL = 100
LARGE = int(os.environ.get("BENCH_SCALE_LARGE", "100000"))
ROUNDS = int(os.environ.get("BENCH_SCALE_ROUNDS", "8"))
REPETITIONS = int(os.environ.get("BENCH_SCALE_REPETITIONS", "6"))
RATIO_GOAL = 1.5


def _use(name: str) -> None:
    """Point the default connection at another database of the same server (or another SQLite file)."""
    from django.contrib.contenttypes.models import ContentType
    from django.db import connection

    connection.close()
    connection.settings_dict["NAME"] = name
    ContentType.objects.clear_cache()  # ids are the other database's


@contextmanager
def _small_database() -> Iterator[tuple[str, str]]:
    """A scratch database beside the bench's, migrated; yields (bench's name, scratch name) and drops it after."""
    from django.core.management import call_command
    from django.db import connection

    main = connection.settings_dict["NAME"]
    if connection.vendor == "postgresql":
        scratch = f"{main}_scale_small"[:63]
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
            cursor.execute(f'CREATE DATABASE "{scratch}"')
    else:
        scratch = str(Path(main).with_name("bench-scale-small.sqlite3"))
        Path(scratch).unlink(missing_ok=True)
    try:
        _use(scratch)
        call_command("migrate", verbosity=0)
        yield main, scratch
    finally:
        _use(main)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
        else:
            Path(scratch).unlink(missing_ok=True)


def _rounds(main: str, scratch: str, small_seed: dict, large_seed: dict) -> tuple[dict, dict]:
    small: dict[str, Measured] = {}
    large: dict[str, Measured] = {}
    for _ in range(ROUNDS):
        for name, seeded, found in ((scratch, small_seed, small), (main, large_seed, large)):
            _use(name)
            for key, measured in measure(seeded, REPETITIONS).items():
                found[key] = found[key].joined(measured) if key in found else measured
    return small, large


def run() -> list[Figure]:
    with _small_database() as (main, scratch):
        small_seed = seed(SMALL)
        _use(main)
        started = time.monotonic()
        large_seed = seed(LARGE)
        seeding = time.monotonic() - started
        small, large = _rounds(main, scratch, small_seed, large_seed)
    figures = []
    for name, before in small.items():
        after = large[name]
        figures.append(
            Figure(
                f"scale_{name}_p95_ratio",
                after.p95_ms / before.p95_ms,
                "x",
                "<=",
                RATIO_GOAL,
                f"p95 {after.p95_ms:.1f} ms at {LARGE:,} vs {before.p95_ms:.1f} ms at {SMALL}; median "
                f"{after.median_ms:.1f} vs {before.median_ms:.1f} ms; {len(after.times_ms)} requests each; "
                f"{after.items} items; {after.url}",
            )
        )
        figures.append(
            Figure(
                f"scale_{name}_extra_queries",
                after.queries - before.queries,
                "queries",
                "<=",
                0,
                f"{after.queries} queries a request at {LARGE:,}, {before.queries} at {SMALL}",
            )
        )
    figures.append(
        Figure("scale_seed_seconds", seeding, "s", ">=", 0, f"growing the database from {SMALL} to {LARGE:,} (info)")
    )
    return figures
