"""Locust users of the console's three roles over its main pages and API (bench/locust_run.py starts it).

Each user signs in as its role: the pages with the session cookie, the API with a bearer token, both read from the
JSON file LOCUST_CONSOLE_CREDENTIALS names ({"admin": {"session": ..., "token": ...}, "engineer": ..., ...}). Each
requests only what its role may open, so any failure (an error, a 4xx, a timeout) counts against the console.
"""

from __future__ import annotations

import json
import os
import random

from locust import HttpUser, between, task

CREDENTIALS = json.loads(open(os.environ["LOCUST_CONSOLE_CREDENTIALS"], encoding="utf-8").read())  # noqa: SIM115
SESSION_COOKIE = os.environ.get("LOCUST_SESSION_COOKIE", "sessionid")

PAGES = ["/", "/deployments/", "/jobs/", "/models/", "/inventory/"]
API = ["/api/v1/me", "/api/v1/deployments/", "/api/v1/jobs/", "/api/v1/hosts/", "/api/v1/models/"]
EXTRA = {
    "admin": (["/users/", "/audit/"], ["/api/v1/users/", "/api/v1/audit/events/"]),
    "engineer": ([], []),
    "auditor": (["/audit/"], ["/api/v1/audit/events/"]),
}


class ConsoleUser(HttpUser):
    abstract = True
    role = ""
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        held = CREDENTIALS[self.role]
        self.client.cookies.set(SESSION_COOKIE, held["session"])
        self.token = held["token"]
        pages, api = EXTRA[self.role]
        self.pages, self.api = PAGES + pages, API + api

    def _get(self, path: str, **kwargs) -> None:
        # Named by role and path: the report's p95 per endpoint and role. Redirects (to the login page) are failures.
        with self.client.get(
            path, name=f"{self.role} {path}", allow_redirects=False, catch_response=True, **kwargs
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}")

    @task(3)
    def page(self) -> None:
        self._get(random.choice(self.pages))

    @task(3)
    def api(self) -> None:
        self._get(random.choice(self.api), headers={"Authorization": f"Bearer {self.token}"})


class Admin(ConsoleUser):
    role = "admin"


class Engineer(ConsoleUser):
    role = "engineer"


class Auditor(ConsoleUser):
    role = "auditor"
