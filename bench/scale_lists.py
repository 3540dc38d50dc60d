"""API lists at two sizes: seed rows in bulk, time each list's requests and count their queries.

Shared by bench/bench_scale.py (100 vs 100k, `make bench`) and tests/console/test_list_scale.py (100 vs 1k, CI).
A list scales when its p95 at the large size stays within a small factor of its p95 at the small size and a
request asks the database the same number of questions at both sizes.

At size N the database holds N deployments (a grant-only user holds view on N/10 of them, at least a page and a
bit more: half granted to the user, half to a team of theirs), N jobs, 10 x N log lines (a tenth in one job, the one
whose log is read) and 10 x N audit events. Rows are added up to the size, so the large size grows the small one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

PAGE = 50  # the API's page size (settings.REST_FRAMEWORK["PAGE_SIZE"])
SCOPED = "scale-scoped"
ADMIN = "scale-admin"
AUDITOR = "scale-auditor"
TEAM = "scale-team"
BATCH = 5000


@dataclass
class Measured:
    name: str
    url: str
    times_ms: list[float]
    queries: int
    items: int
    count: int | None  # the list's total as the API gave it (paginated lists)

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    @property
    def median_ms(self) -> float:
        return sorted(self.times_ms)[len(self.times_ms) // 2]

    def joined(self, other: Measured) -> Measured:
        """This and another round of the same list (same queries asked, else an error)."""
        if other.queries != self.queries:
            raise RuntimeError(f"{self.name}: {self.queries} queries in one round, {other.queries} in another")
        return Measured(self.name, self.url, self.times_ms + other.times_ms, self.queries, other.items, other.count)


def _users() -> dict:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from tests.factories import UserFactory

    users = get_user_model().objects
    found = {}
    for username, role in ((ADMIN, "admin"), (AUDITOR, "auditor"), (SCOPED, None)):
        user = users.filter(username=username).first()
        found[username] = user or UserFactory(username=username, roles=[role] if role else [])
    team, _ = Group.objects.get_or_create(name=TEAM)
    found[SCOPED].groups.add(team)
    found[TEAM] = team
    return found


def _grant_rows(users: dict, deployments: list[int], already: int) -> int:
    """View grants on the given deployment ids, alternating user and team, as guardian's rows."""
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from deployments.models import Deployment

    kind = ContentType.objects.get_for_model(Deployment)
    view = Permission.objects.get(content_type=kind, codename="view_deployment")
    mine, teams = [], []
    held = {"permission": view, "content_type": kind}
    for index, pk in enumerate(deployments, start=already):
        if index % 2:
            teams.append(GroupObjectPermission(group=users[TEAM], object_pk=str(pk), **held))
        else:
            mine.append(UserObjectPermission(user=users[SCOPED], object_pk=str(pk), **held))
    UserObjectPermission.objects.bulk_create(mine, batch_size=BATCH)
    GroupObjectPermission.objects.bulk_create(teams, batch_size=BATCH)
    return len(deployments)


def _grants_held() -> int:
    from guardian.models import GroupObjectPermission, UserObjectPermission

    return (
        UserObjectPermission.objects.filter(user__username=SCOPED).count()
        + GroupObjectPermission.objects.filter(group__name=TEAM).count()
    )


def _copy_log_lines(job_id: int, first_seq: int, count: int) -> None:
    """Log lines straight in: COPY on PostgreSQL, bulk_create elsewhere."""
    from django.db import connection
    from django.utils import timezone

    from deployments.models import JobLogLine

    now = timezone.now()
    if connection.vendor == "postgresql":
        with (
            connection.cursor() as cursor,
            cursor.cursor.copy(
                "COPY deployments_joblogline (job_id, seq, created_at, stream, text) FROM STDIN"
            ) as copy,
        ):
            for seq in range(first_seq, first_seq + count):
                copy.write_row((job_id, seq, now, "log", f"step {seq}: loss 0.{seq % 997:03d}"))
        return
    lines = (
        JobLogLine(job_id=job_id, seq=seq, created_at=now, text=f"step {seq}: loss 0.{seq % 997:03d}")
        for seq in range(first_seq, first_seq + count)
    )
    batch = []
    for line in lines:
        batch.append(line)
        if len(batch) == BATCH:
            JobLogLine.objects.bulk_create(batch)
            batch = []
    JobLogLine.objects.bulk_create(batch)


def _grow_logs(jobs: list[int], target: int) -> int:
    """Lines up to `target` in all: a tenth in the first job (the one read), the rest spread over the others."""
    from django.db.models import Count, Max

    from deployments.models import Job, JobLogLine

    read = jobs[0]
    held = dict(JobLogLine.objects.filter(job_id__in=jobs).values_list("job_id").annotate(n=Count("id")))
    highest = dict(JobLogLine.objects.filter(job_id__in=jobs).values_list("job_id").annotate(top=Max("seq")))
    want_read = max(target // 10, PAGE * 2)
    if held.get(read, 0) < want_read:
        _copy_log_lines(read, highest.get(read, 0) + 1, want_read - held.get(read, 0))
    rest = target - want_read - sum(n for job, n in held.items() if job != read)
    others = jobs[1:]
    if rest > 0 and others:
        each, extra = divmod(rest, len(others))
        for index, job in enumerate(others):
            count = each + (1 if index < extra else 0)
            if count:
                _copy_log_lines(job, highest.get(job, 0) + 1, count)
    for job, top in JobLogLine.objects.filter(job_id__in=jobs).values_list("job_id").annotate(top=Max("seq")):
        Job.objects.filter(pk=job).update(log_seq=top)
    return read


def seed(size: int) -> dict:
    """Grow the database to `size` (see the module's text); returns the users and the job whose log is read."""
    from django.db import transaction

    from audit.models import AuditEvent
    from bench.bench_audit import _seed_chain
    from deployments.models import Deployment, Job

    users = _users()
    with transaction.atomic():
        existing = Deployment.objects.filter(name__startswith="scale-").count()
        Deployment.objects.bulk_create(
            [Deployment(name=f"scale-{n:07d}", team=users[TEAM]) for n in range(existing, size)], batch_size=BATCH
        )
        held = _grants_held()
        wanted = max(size // 10, PAGE + 10)
        if held < wanted:
            # Spread over the whole table (every k-th deployment), so granted rows are not merely the first ones.
            every = max(1, size // wanted)
            ids = list(Deployment.objects.filter(name__startswith="scale-").order_by("pk").values_list("pk", flat=True))
            candidates = ids[::every]
            granted = set(_granted_ids())
            fresh = [pk for pk in candidates if pk not in granted][: wanted - held]
            _grant_rows(users, fresh, held)
        jobs_held = Job.objects.filter(queue="scale").count()
        Job.objects.bulk_create(
            [
                Job(kind=Job.Kind.DOWNLOAD, status=Job.Status.SUCCEEDED, queue="scale", actor=users[ADMIN])
                for _ in range(jobs_held, size)
            ],
            batch_size=BATCH,
        )
        jobs = list(Job.objects.filter(queue="scale").order_by("pk").values_list("pk", flat=True)[:100])
        read = _grow_logs(jobs, size * 10)
    events = AuditEvent.objects.count()
    if events < size * 10:
        _seed_chain(size * 10 - events)
    _analyze()
    return {**users, "read_job": read}


def _granted_ids() -> list[int]:
    from guardian.models import GroupObjectPermission, UserObjectPermission

    user = UserObjectPermission.objects.filter(user__username=SCOPED).values_list("object_pk", flat=True)
    team = GroupObjectPermission.objects.filter(group__name=TEAM).values_list("object_pk", flat=True)
    return [int(pk) for pk in [*user, *team]]


def _analyze() -> None:
    """Fresh statistics, as autovacuum would leave them after a while in production."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def endpoints(seeded: dict) -> list[tuple[str, str, object]]:
    """(name, url, user) of every list measured."""
    read = seeded["read_job"]
    return [
        ("deployments_scoped", "/api/v1/deployments/", seeded[SCOPED]),
        ("deployments_admin", "/api/v1/deployments/", seeded[ADMIN]),
        ("jobs", "/api/v1/jobs/", seeded[ADMIN]),
        ("job_log", f"/api/v1/jobs/{read}/log/?limit={PAGE}", seeded[ADMIN]),
        ("job_log_tail", f"/api/v1/jobs/{read}/log/?after={{tail}}&limit={PAGE}", seeded[ADMIN]),
        ("audit_events", "/api/v1/audit/events/", seeded[AUDITOR]),
    ]


def prepare(seeded: dict) -> list[tuple[str, str, object]]:
    """(name, url, signed-in client) of every list, on the database in use now."""
    from django.test import Client

    from deployments.models import Job

    tail = max(0, Job.objects.get(pk=seeded["read_job"]).log_seq - PAGE)
    prepared = []
    for name, url, user in endpoints(seeded):
        client = Client(HTTP_HOST="127.0.0.1")
        client.force_login(user)
        prepared.append((name, url.replace("{tail}", str(tail)), client))
    return prepared


def request(name: str, url: str, client) -> Measured:
    """One request: its wall time, its queries, what it listed."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    connection.queries_log.clear()  # a full log (9000 entries) would count nothing
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        response = client.get(url)
        elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{name}: {url} answered {response.status_code}: {response.content[:300]!r}")
    body = response.json()
    items = len(body.get("results", body.get("items", [])))
    return Measured(name, url, [elapsed * 1000], len(queries), items, body.get("count"))


def measure(seeded: dict, repetitions: int) -> dict[str, Measured]:
    """Each list `repetitions` times (after two warm-ups): the wall times and the queries of one request (the same
    for every repetition, else an error)."""
    found = {}
    for name, url, client in prepare(seeded):
        for _ in range(2):
            request(name, url, client)
        measured = request(name, url, client)
        for _ in range(repetitions - 1):
            measured = measured.joined(request(name, url, client))
        found[name] = measured
    return found
