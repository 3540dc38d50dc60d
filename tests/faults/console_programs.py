"""Small programs the fault tests run as processes of their own, against the private services the test set up
(DATABASE_URL and REDIS_URL in their environment), so the test process's own connections are never the ones a
fault breaks:

    python -m tests.faults.console_programs seed            -> JSON: an admin's API token and session cookie
    python -m tests.faults.console_programs jobs OUT N GAP LINES DELAY QUEUE FIRST_LINES
        creates N test.count jobs GAP seconds apart (the first one with FIRST_LINES lines), appending each
        committed job's id to OUT
"""

from __future__ import annotations

import json
import os
import sys
import time


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()


def seed() -> dict:
    from django.conf import settings
    from django.contrib.auth.models import Group
    from django.test import Client

    from console.accounts.services.tokens import token_create
    from tests.factories.accounts import UserFactory

    user = UserFactory(username="fault-admin")
    user.groups.add(Group.objects.get(name="admin"))
    _, raw = token_create(actor=user, user=user, name="fault test")
    client = Client()
    client.force_login(user)
    return {"token": raw, "cookie": client.cookies[settings.SESSION_COOKIE_NAME].value, "user": user.pk}


def jobs(out: str, count: int, gap: float, lines: int, delay: float, queue: str, first_lines: int) -> None:
    """Jobs created the way a service creates them (committed, then dispatched after commit); a dispatch that
    fails (Redis away) leaves the job pending for the reaper, and the id is written all the same: committed."""
    import tests.support.job_handlers  # noqa: F401  (the test.count kind)
    from deployments.jobs.services import job_create

    with open(out, "a") as handle:
        for n in range(count):
            params = {"lines": first_lines if n == 0 else lines, "delay": delay}
            job = job_create(kind="test.count", actor=None, params=params, queue=queue)
            handle.write(f"{job.pk}\n")
            handle.flush()
            time.sleep(gap)


if __name__ == "__main__":
    _django()
    command, *args = sys.argv[1:]
    if command == "seed":
        print(json.dumps(seed()))
    elif command == "jobs":
        out, count, gap, lines, delay, queue, first_lines = args
        jobs(out, int(count), float(gap), int(lines), float(delay), queue, int(first_lines))
    else:
        raise SystemExit(f"unknown command {command}")
