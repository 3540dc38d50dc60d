"""API lists at scale: each list's p95 at 100k deployments (10k of them granted to a grant-only user), 100k jobs,
1M log lines and 1M audit events, against its p95 at 100 of each, and the queries a request asks at both sizes.

The two sizes live in two databases (the bench's, grown to the large size, and a scratch one beside it at the small
size), each with its own open connection; requests alternate between them one by one (the default connection is
swapped), so a busy neighbour slows both sizes alike instead of whichever ran while it was busy.

Options for a busy machine: BENCH_SCALE_LARGE (the large size, 100000 by default), BENCH_SCALE_REPETITIONS (requests
per list and size, 48).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import Figure
from bench.scale_lists import Measured, prepare, request, seed

SMALL = 100
LARGE = int(os.environ.get("BENCH_SCALE_LARGE", "100000"))
REPETITIONS = int(os.environ.get("BENCH_SCALE_REPETITIONS", "48"))
RATIO_GOAL = 1.5


def _use(wrapper) -> None:
    from django.db import DEFAULT_DB_ALIAS, connections

    connections[DEFAULT_DB_ALIAS] = wrapper


def _content_types() -> dict:
    from django.contrib.contenttypes.models import ContentType

    return {(kind.app_label, kind.model): kind.pk for kind in ContentType.objects.all()}


@contextmanager
def _small_database() -> Iterator[tuple[object, object]]:
    """A scratch database beside the bench's, migrated, with its own connection; yields (bench's connection,
    scratch's) and drops it after."""
    from django.core.management import call_command
    from django.db import DEFAULT_DB_ALIAS, connections

    main = connections[DEFAULT_DB_ALIAS]
    name = main.settings_dict["NAME"]
    if main.vendor == "postgresql":
        scratch_name = f"{name}_scale_small"[:63]
        with main.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{scratch_name}"')
            cursor.execute(f'CREATE DATABASE "{scratch_name}"')
    else:
        scratch_name = str(Path(name).with_name("bench-scale-small.sqlite3"))
        Path(scratch_name).unlink(missing_ok=True)
    scratch = connections.create_connection(DEFAULT_DB_ALIAS)
    scratch.settings_dict = {**main.settings_dict, "NAME": scratch_name}
    try:
        _use(scratch)
        call_command("migrate", verbosity=0)
        yield main, scratch
    finally:
        _use(main)
        scratch.close()
        if main.vendor == "postgresql":
            with main.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{scratch_name}"')
        else:
            Path(scratch_name).unlink(missing_ok=True)


def _alternating(sides: list[tuple[object, list]]) -> list[dict[str, Measured]]:
    """Every list at each size in turn, request by request (the side that goes first alternates too)."""
    found: list[dict[str, Measured]] = [{} for _ in sides]
    for attempt in range(REPETITIONS + 2):
        order = list(enumerate(sides)) if attempt % 2 else list(reversed(list(enumerate(sides))))
        for index in range(len(sides[0][1])):
            for side, (wrapper, prepared) in order:
                _use(wrapper)
                measured = request(*prepared[index])
                if attempt < 2:
                    continue  # warm-up
                name = measured.name
                found[side][name] = found[side][name].joined(measured) if name in found[side] else measured
    return found


def run() -> list[Figure]:
    with _small_database() as (main, scratch):
        small_seed = seed(SMALL)
        small_types = _content_types()
        small_prepared = prepare(small_seed)
        _use(main)
        if _content_types() != small_types:  # restrict() reads content types from a per-process cache
            raise RuntimeError("the two databases number their content types differently")
        started = time.monotonic()
        large_seed = seed(LARGE)
        seeding = time.monotonic() - started
        large_prepared = prepare(large_seed)
        small, large = _alternating([(scratch, small_prepared), (main, large_prepared)])
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
