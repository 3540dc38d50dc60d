"""Schemathesis against /api/v1/: every operation of the served schema, as an admin and as an engineer; no
request may end in a 500 (or in another 5xx the operation does not document, such as ping's 503).

Two passes per operation, each case sent as each role (drawn once for both: drawing was a sixth of the run):
- generated: EXAMPLES cases drawn by schemathesis, valid and invalid (positive and negative modes), every
  media type the schema names; the `{id}` is a seeded object half of the time;
- hostile: each query parameter, the `{id}` and each top-level JSON body field in turn gets every value of
  tests/support/hostile.py (NUL bytes, 100k characters, lists for scalars, huge numbers, traversal...).

Stateless: each request runs in its own savepoint, rolled back after the response, so deleting a host, the
acting user's own token or the acting user never hides the cases after it. Derandomized: CI sees the same
cases on every run. The counts are printed and written to test-artifacts/api-fuzz.json, per role.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlencode

import hypothesis
import pytest
import schemathesis
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode

from console.accounts.models import ApiToken
from console.accounts.services.tokens import token_create
from console.wsgi import application
from tests.support import hostile
from tests.support.fixtures import ROOT
from tests.support.fuzz_heap import steady_heap
from tests.support.fuzz_seed import seed_objects
from tests.support.in_process import InProcessApp

pytestmark = pytest.mark.django_db

EXAMPLES = 20  # generated cases per operation, each sent as every role
ROLES = ("admin", "engineer")
SCHEMA_PATH = "/api/v1/schema/?format=json"
ARTIFACT = ROOT / "test-artifacts" / "api-fuzz.json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same cases on every run
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are collected, not raised
    suppress_health_check=list(HealthCheck),
    verbosity=hypothesis.Verbosity.quiet,
)


@pytest.fixture
def fuzz_world(admin, engineer, hub_server, celery_worker_process):
    """Seeded objects, a write token per role, the schema as the app serves it, the app in-process.
    The Hub is the local test server; ping's task reaches a real worker."""
    seeded = seed_objects(admin, engineer)
    bearer = {}
    for role, user in zip(ROLES, (admin, engineer), strict=True):
        token, raw = token_create(actor=user, user=user, name="fuzz", scope=ApiToken.Scope.WRITE)
        # Marked used ahead of the run: every request is rolled back, so the once-a-minute "last used" write
        # would otherwise be made (and undone) on every one of them.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now() + timedelta(days=1))
        bearer[role] = {"Authorization": f"Bearer {raw}"}
    app = InProcessApp(application)
    schema = schemathesis.openapi.from_wsgi(SCHEMA_PATH, app, headers=bearer["admin"])
    return {"seeded": seeded, "bearer": bearer, "app": app, "schema": schema}


@dataclass
class Tally:
    """What one operation answered, for the report; `failures` hold the request and the traceback."""

    generated: int = 0
    hostile: int = 0
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def _send(case, *, app: InProcessApp, headers: dict, documented: set[str], tally: Tally, label: str = "") -> None:
    """One request in a savepoint that is rolled back, whatever the request changed."""
    seen, started = len(app.tracebacks), time.monotonic()
    with transaction.atomic():
        response = case.call(app=app, headers=headers)
        transaction.set_rollback(True)
    tally.seconds += time.monotonic() - started
    status = response.status_code
    tally.statuses[status] += 1
    if status == 500 or (status > 500 and str(status) not in documented):
        request = case.as_curl_command(headers=headers)
        tally.failures.append(f"{status} {label} for {request[:2000]}\n" + "".join(app.tracebacks[seen:]))


def _generated(operation, *, app, bearer, seeded, documented, tallies: dict[str, Tally]) -> None:
    """EXAMPLES drawn cases, each sent as every role (the same requests, each role's own answers)."""
    strategy = st.one_of(operation.as_strategy(generation_mode=mode) for mode in GenerationMode)

    @SETTINGS
    @given(case=strategy, real_object=st.booleans())
    def run(case, real_object):
        if real_object and "id" in (case.path_parameters or {}):
            case.path_parameters = {**case.path_parameters, "id": seeded[_resource(operation.path)]}
        for role, tally in tallies.items():
            _send(case, app=app, headers=bearer[role], documented=documented, tally=tally, label=f"as {role}")
            tally.generated += 1

    run()


def _hostile(operation, *, raw_schema: dict, seeded: dict[str, int]) -> Iterator[tuple[str, object]]:
    """(label, case) for every hostile value in every query parameter, the id and every JSON body field."""
    path = {"id": seeded[_resource(operation.path)]} if "{id}" in operation.path else {}
    # Other path parameters get a real value, so the hostile values reach past the router.
    others = {name: OTHER_PATH_VALUES[name] for name in re.findall(r"\{(\w+)\}", operation.path) if name != "id"}
    path.update(others)
    definition = operation.definition.raw
    for parameter in definition.get("parameters", []):
        if parameter["in"] != "query":
            continue
        sent_before = set()
        for name, value in hostile.JSON.items():
            sent = hostile.as_query_value(value)
            # A value whose query string is one sent before makes the very same request ("minus-one" and
            # "negative" are both ?x=-1; "empty-list" and "empty" both ?x=): sent once.
            if sent is not None and (query := urlencode({"x": sent}, doseq=True)) not in sent_before:
                sent_before.add(query)
                case = operation.Case(path_parameters=path, query={parameter["name"]: sent})
                yield f"?{parameter['name']}={name}", case
    if path:
        for name, value in hostile.TEXT.items():
            yield f"id={name}", operation.Case(path_parameters={**others, "id": value})
    body = definition.get("requestBody", {}).get("content", {}).get("application/json")
    if body is None:
        return
    for name, value in hostile.JSON.items():
        yield f"body={name}", operation.Case(path_parameters=path, body=value, media_type="application/json")
    for prop in _properties(body.get("schema", {}), raw_schema):
        for name, value in hostile.JSON.items():
            case = operation.Case(path_parameters=path, body={prop: value}, media_type="application/json")
            yield f"{prop}={name}", case


# Path parameters besides {id}, by name: a seeded value (tests/support/fuzz_seed.py). A new one must be named here.
OTHER_PATH_VALUES = {"username": "olivia-other", "version": "1"}


def _properties(schema: dict, raw_schema: dict) -> list[str]:
    """Top-level properties of a request body schema (following one $ref)."""
    if "$ref" in schema:
        schema = raw_schema["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return list(schema.get("properties", {}))


def _resource(path: str) -> str:
    """/api/v1/audit/events/{id}/ -> audit/events"""
    return path.removeprefix("/api/v1/").split("/{", 1)[0]


def test_no_api_operation_answers_with_a_server_error(fuzz_world):
    schema, app, seeded, bearer = fuzz_world["schema"], fuzz_world["app"], fuzz_world["seeded"], fuzz_world["bearer"]
    started = time.monotonic()
    in_schema = sum(len(HTTP_METHODS.intersection(methods)) for methods in schema.raw_schema["paths"].values())
    tallies: dict[str, dict[str, Tally]] = {role: {} for role in ROLES}
    with steady_heap():
        for result in schema.get_all_operations():
            operation = result.ok()
            of_operation = {role: tallies[role].setdefault(operation.label, Tally()) for role in ROLES}
            _fuzz(operation, app=app, bearer=bearer, seeded=seeded, raw_schema=schema.raw_schema, tallies=of_operation)
    failures = []
    for role in ROLES:
        summary = _summary(tallies[role], in_schema)
        _write_artifact(role, summary)
        print(
            f"\napi fuzz as {role}: {summary['operations']} operations, {summary['generated_cases']} generated and "
            f"{summary['hostile_cases']} hostile cases, {summary['seconds']} s in requests"
        )
        failures += [failure for t in tallies[role].values() for failure in t.failures]
    print(f"api fuzz: {round(time.monotonic() - started, 1)} s in all")
    assert not failures, f"{len(failures)} server errors:\n\n" + "\n\n".join(failures)
    for role in ROLES:
        assert len(tallies[role]) == in_schema > 0, f"an operation of the schema was not fuzzed as {role}"
        thin = {label: t.generated for label, t in tallies[role].items() if t.generated < EXAMPLES}
        assert not thin, f"operations with fewer than {EXAMPLES} generated cases as {role}: {thin}"


def _fuzz(operation, *, app, bearer, seeded, raw_schema, tallies: dict[str, Tally]) -> None:
    """Both passes on one operation, each case sent as every role."""
    documented = set(operation.definition.raw.get("responses", {}))
    _generated(operation, app=app, bearer=bearer, seeded=seeded, documented=documented, tallies=tallies)
    for label, case in _hostile(operation, raw_schema=raw_schema, seeded=seeded):
        for role, tally in tallies.items():
            _send(case, app=app, headers=bearer[role], documented=documented, tally=tally, label=f"{label} as {role}")
            tally.hostile += 1


def _summary(tallies: dict[str, Tally], in_schema: int) -> dict:
    """One role's counts, and the seconds its requests took (generation excluded), per operation."""
    return {
        "operations": len(tallies),
        "operations_in_schema": in_schema,
        "generated_cases": sum(t.generated for t in tallies.values()),
        "hostile_cases": sum(t.hostile for t in tallies.values()),
        "seconds": round(sum(t.seconds for t in tallies.values()), 1),
        "per_operation": {
            label: {
                "generated": t.generated,
                "hostile": t.hostile,
                "seconds": round(t.seconds, 2),
                "statuses": dict(sorted(t.statuses.items())),
            }
            for label, t in tallies.items()
        },
    }


def _write_artifact(role: str, summary: dict) -> None:
    ARTIFACT.parent.mkdir(exist_ok=True)
    report = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    report[role] = summary
    ARTIFACT.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
