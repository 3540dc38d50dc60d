"""Usage metering: the daily figures per key, team, deployment and adapter, added to in batches by the
inference log's flush (records.flush calls add_usage inside its transaction), and read back for the Usage page,
its CSV export and the API.

Latency is kept as a histogram per row (counts per upper bound of LATENCY_BOUNDS_MS, plus an overflow slot), so the
percentiles of any selection of rows are read from the sum of their histograms: exact to the bucket, whatever the
filter, without keeping one number per call."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _

from console.permissions import restrict_usage
from deployments.models import Deployment, InferenceKey, UsageDay


def _bounds() -> tuple[float, ...]:
    # Ten steps per decade (the R10 series), from 5 ms to 600 s: every bucket is 25% wider than the one before,
    # so a percentile read from it is off by at most a quarter of its value, at any latency.
    steps = (1, 1.25, 1.6, 2, 2.5, 3.2, 4, 5, 6.3, 8)
    values = [float(round(step * 10**power, 3)) for power in range(6) for step in steps]
    return (*(value for value in values if 5 <= value <= 500_000), 600_000.0)


# Changing these re-labels every stored histogram: it needs a data migration of UsageDay.latency_histogram.
LATENCY_BOUNDS_MS: tuple[float, ...] = _bounds()
SLOTS = len(LATENCY_BOUNDS_MS) + 1  # the last slot counts calls slower than the last bound
KEY_FIELDS = ("day", "key_id", "team_id", "deployment_id", "adapter")
COUNTERS = ("requests", "errors", "prompt_tokens", "completion_tokens")
BASE_MODEL = ":base"  # the adapter filter's value for calls to the base model (no adapter name has a colon)
GROUPS = {"day": "day", "key": "key_id", "team": "team_id", "deployment": "deployment_id", "adapter": "adapter"}
MAX_FILLED_DAYS = 366  # a chart over a longer range shows the days that have data, not every day


def latency_slot(duration_ms: float) -> int:
    """The histogram slot of a call: the first bound it does not exceed, or the overflow slot."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, max(0.0, duration_ms))


def add_histograms(total: list[int], other: Iterable[int]) -> list[int]:
    """Add `other` into `total` slot by slot (in place; a short or missing stored list counts as zeros)."""
    for slot, count in enumerate(other or ()):
        if slot < len(total):
            total[slot] += int(count)
    return total


def percentile(histogram: list[int], q: float) -> float:
    """The q-th percentile (0 < q <= 100) of the calls a histogram counts, in ms, interpolated linearly within
    its bucket (as Prometheus' histogram_quantile); 0.0 for an empty histogram. A rank in the overflow slot reads
    as the last bound: the histogram cannot say how much slower those calls were."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is outside (0, 100]")
    total = sum(histogram)
    if total <= 0:
        return 0.0
    rank = q / 100 * total
    seen = 0
    for slot, count in enumerate(histogram):
        if count and seen + count >= rank:
            if slot >= len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            lower = LATENCY_BOUNDS_MS[slot - 1] if slot else 0.0
            upper = LATENCY_BOUNDS_MS[slot]
            return float(lower + (upper - lower) * (rank - seen) / count)
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


# -- writing ------------------------------------------------------------------------------------------------------
def _day_of(started_at) -> date:
    moment = started_at if isinstance(started_at, datetime) else parse_datetime(str(started_at))
    if moment is None:
        raise ValueError(f"started_at {started_at!r} is no ISO-8601 time")
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_default_timezone())
    # The console's time zone, not the viewer's: a call belongs to one day for everybody.
    return moment.astimezone(timezone.get_default_timezone()).date()


@dataclass
class Figures:
    """Sums over some calls: counters and the latency histogram."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * SLOTS)

    def add_call(self, record: dict) -> None:
        self.requests += 1
        self.errors += int(record.get("status") or 0) >= 400
        self.prompt_tokens += int(record.get("prompt_tokens") or 0)
        self.completion_tokens += int(record.get("completion_tokens") or 0)
        self.histogram[latency_slot(float(record.get("duration_ms") or 0))] += 1

    def add(self, requests: int, errors: int, prompt: int, completion: int, histogram: Iterable[int]) -> None:
        self.requests += requests
        self.errors += errors
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        add_histograms(self.histogram, histogram)

    def as_dict(self) -> dict:
        """The figures as shown: sums, error rate and latency percentiles (None without calls)."""
        called = self.requests > 0
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.errors / self.requests, 4) if called else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "p50_ms": round(percentile(self.histogram, 50), 1) if called else None,
            "p90_ms": round(percentile(self.histogram, 90), 1) if called else None,
            "p99_ms": round(percentile(self.histogram, 99), 1) if called else None,
        }


def aggregate(records: Iterable[dict]) -> dict[tuple, Figures]:
    """A batch's calls summed by (day, key, team, deployment, adapter); missing ids are 0, as stored."""
    sums: dict[tuple, Figures] = {}
    for record in records:
        key = (
            _day_of(record["started_at"]),
            int(record.get("key_id") or 0),
            int(record.get("team_id") or 0),
            int(record.get("deployment_id") or 0),
            str(record.get("adapter") or ""),
        )
        sums.setdefault(key, Figures()).add_call(record)
    return sums


@transaction.atomic
def add_usage(records: list[dict]) -> None:
    """Add a batch of inference records (InferenceRecord fields as dicts) to the daily usage rows.

    Safe under concurrent flushers: missing rows are created first (INSERT ... ON CONFLICT DO NOTHING), then the
    batch's rows are locked (SELECT ... FOR UPDATE) and added to. Both steps go in one fixed order, so two
    flushers touching the same rows wait for each other instead of deadlocking, and no addition is lost."""
    sums = aggregate(records)
    if not sums:
        return
    keys = sorted(sums)
    UsageDay.objects.bulk_create(
        [UsageDay(**dict(zip(KEY_FIELDS, key, strict=True)), latency_histogram=[0] * SLOTS) for key in keys],
        ignore_conflicts=True,
    )
    match = Q()
    for key in keys:
        match |= Q(**dict(zip(KEY_FIELDS, key, strict=True)))
    rows = list(UsageDay.objects.select_for_update().filter(match).order_by(*KEY_FIELDS))
    for row in rows:
        figures = sums[tuple(getattr(row, name) for name in KEY_FIELDS)]
        for name in COUNTERS:
            setattr(row, name, getattr(row, name) + getattr(figures, name))
        row.latency_histogram = add_histograms(list(figures.histogram), row.latency_histogram)
    UsageDay.objects.bulk_update(rows, [*COUNTERS, "latency_histogram"])


# -- reading ------------------------------------------------------------------------------------------------------
def usage_rows(*, user, filters: dict) -> QuerySet[UsageDay]:
    """The usage rows the user may see (console.permissions.restrict_usage), narrowed by the cleaned filters of
    UsageFilterForm: since/until (days, inclusive), deployment, team, key (ids), adapter (BASE_MODEL: none)."""
    rows = restrict_usage(UsageDay.objects.all(), user)
    if filters.get("since"):
        rows = rows.filter(day__gte=filters["since"])
    if filters.get("until"):
        rows = rows.filter(day__lte=filters["until"])
    for name in ("deployment", "team", "key"):
        if filters.get(name) not in (None, ""):
            rows = rows.filter(**{f"{name}_id": filters[name]})
    adapter = filters.get("adapter")
    if adapter:
        rows = rows.filter(adapter="" if adapter == BASE_MODEL else adapter)
    return rows


def _each(rows: QuerySet[UsageDay]):
    fields = (*KEY_FIELDS, *COUNTERS, "latency_histogram")
    yield from rows.order_by().values_list(*fields).iterator(chunk_size=2000)


def usage_summary(rows: QuerySet[UsageDay]) -> dict:
    """Totals over the rows: sums, error rate, latency percentiles."""
    totals = Figures()
    for *_key, requests, errors, prompt, completion, histogram in _each(rows):
        totals.add(requests, errors, prompt, completion, histogram)
    return totals.as_dict()


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def usage_report(rows: QuerySet[UsageDay], *, group_by: str = "deployment", since=None, until=None) -> dict:
    """Totals, a per-day series (every day of since..until when that is at most MAX_FILLED_DAYS long, else the
    days with calls) and the rows grouped by one dimension of GROUPS, busiest first, each with a label."""
    position = KEY_FIELDS.index(GROUPS[group_by])
    totals, by_day, groups = Figures(), {}, {}
    for row in _each(rows):
        figures = row[len(KEY_FIELDS) : len(KEY_FIELDS) + len(COUNTERS)]
        for target in (totals, by_day.setdefault(row[0], Figures()), groups.setdefault(row[position], Figures())):
            target.add(*figures, row[-1])
    days = sorted(by_day)
    if since and until and 0 <= (until - since).days < MAX_FILLED_DAYS:
        days = _days(since, until)
    series = [{"day": day.isoformat(), **by_day.get(day, Figures()).as_dict()} for day in days]
    labels = dimension_labels(group_by, groups)
    ordered = sorted(groups.items(), key=lambda item: (-item[1].requests, str(item[0])))
    grouped = [
        {"value": value.isoformat() if isinstance(value, date) else value, "label": labels[value], **figures.as_dict()}
        for value, figures in ordered
    ]
    return {"group_by": group_by, "totals": totals.as_dict(), "series": series, "rows": grouped}


def dimension_labels(dimension: str, values: Iterable) -> dict:
    """What a value of a dimension is called: a key's name and prefix, a team's or deployment's name, an adapter's
    name ("base model" for none), a day. Gone objects read as their id; id 0 as a dash."""
    values = list(values)
    ids = [value for value in values if isinstance(value, int) and value]
    if dimension == "key":
        names = {key.pk: f"{key.name} ({key.prefix}…)" for key in InferenceKey.objects.filter(pk__in=ids)}
    elif dimension == "team":
        names = dict(Group.objects.filter(pk__in=ids).values_list("pk", "name"))
    elif dimension == "deployment":
        names = dict(Deployment.objects.filter(pk__in=ids).values_list("pk", "name"))
    elif dimension == "adapter":
        return {value: value or _("base model") for value in values}
    else:
        return {value: value.isoformat() if isinstance(value, date) else str(value) for value in values}
    return {value: names.get(value, f"#{value}") if value else "—" for value in values}


def filter_choices(*, user) -> dict[str, list[tuple]]:
    """The values the filters offer: those present in the usage the user may see (never another user's key)."""
    rows = restrict_usage(UsageDay.objects.all(), user).order_by()
    choices = {}
    for dimension in ("deployment", "team", "key", "adapter"):
        values = sorted(set(rows.values_list(GROUPS[dimension], flat=True).distinct()))
        labels = dimension_labels(dimension, values)
        if dimension == "adapter":
            choices[dimension] = [(value or BASE_MODEL, labels[value]) for value in values]
        else:
            choices[dimension] = sorted(((value, labels[value]) for value in values if value), key=lambda c: c[1])
    return choices
