"""The Usage page, its CSV export and the usage API: filters, totals, charts' data, grouping, the empty state, and
who sees what (admins and auditors all of it; an engineer the usage of their own keys and of their teams' service
accounts, nothing else, in the page, the export and the API alike)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from console.navigation import visible_items
from deployments.gateway.usage import add_usage
from tests.deployments.gateway.usage_support import call, make_key, make_service_account
from tests.factories import DeploymentFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db
MARCH = {"since": "2025-03-01", "until": "2025-03-31"}


@pytest.fixture
def world(engineer):
    """Three keys with calls in March 2025: the engineer's own, a service account's of the engineer's team, and
    another engineer's. Two deployments, one of them with an adapter."""
    team = TeamFactory(name="payments")
    engineer.groups.add(team)
    other = UserFactory(username="oscar-other", roles=["engineer"])
    chat, code = DeploymentFactory(name="chat"), DeploymentFactory(name="code")
    mine = make_key(user=engineer, name="erin-laptop")
    service = make_key(service_account=make_service_account(team), name="billing-prod")
    theirs = make_key(user=other, name="oscar-secret-project")
    add_usage(
        [
            call(key_id=mine.pk, deployment_id=chat.pk, started_at="2025-03-01T09:00:00Z", duration_ms=9),
            call(key_id=mine.pk, deployment_id=chat.pk, started_at="2025-03-03T09:00:00Z", duration_ms=9, status=500),
            call(key_id=service.pk, team_id=team.pk, deployment_id=code.pk, adapter="sql", started_at="2025-03-03T10Z"),
            *[
                call(key_id=theirs.pk, deployment_id=code.pk, started_at="2025-03-02T10:00:00Z", prompt_tokens=1000)
                for _ in range(5)
            ],
        ]
    )
    return {"team": team, "chat": chat, "code": code, "mine": mine, "service": service, "theirs": theirs}


def page(client, user, expected: int = 200, **params):
    client.force_login(user)
    response = client.get("/gateway/usage/", params)
    assert response.status_code == expected, response.content.decode()[:2000]
    return response.content.decode()


def totals(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-total="(\w+)">([^<]*)<', html))


def table(html: str) -> list[str]:
    return re.findall(r"<td data-user-text>([^<]*)</td>", html)


def series(html: str) -> list[dict]:
    return json.loads(re.search(r'<script id="usage-series" type="application/json">(.*?)</script>', html, re.S)[1])


def exported(response) -> list[dict]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_an_admin_sees_every_call_with_totals_charts_and_rows_by_deployment(client, admin, world):
    html = page(client, admin, **MARCH)
    assert totals(html) == {
        "requests": "8",
        "errors": "1",
        "prompt_tokens": str(3 * 10 + 5 * 1000),
        "completion_tokens": str(8 * 20),
        "latency": "86.7 / 97.3 / 99.7",  # 2 calls in (8, 10] ms, 6 in (80, 100]: ranks 4, 7.2, 7.92
    }
    assert table(html) == ["code", "chat"]  # busiest first
    days = series(html)
    assert len(days) == 31 and days[0]["day"] == "2025-03-01" and days[-1]["day"] == "2025-03-31"
    assert [day["requests"] for day in days[:4]] == [1, 5, 2, 0]
    assert days[3]["p50_ms"] is None  # no calls, no latency
    assert "uPlot.iife.min.js" in html and "usage_charts.js" in html
    assert 'id="usage-export"' in html


def test_filters_narrow_the_figures_and_group_by_changes_the_table(client, admin, world):
    html = page(client, admin, **MARCH, deployment=world["code"].pk, group_by="adapter")
    assert totals(html)["requests"] == "6"
    assert table(html) == ["base model", "sql"]
    html = page(client, admin, **MARCH, adapter="sql", group_by="key")
    assert totals(html)["requests"] == "1" and table(html) == ["billing-prod (" + world["service"].prefix + "…)"]
    html = page(client, admin, since="2025-03-02", until="2025-03-02", group_by="day")
    assert totals(html)["requests"] == "5" and table(html) == ["2025-03-02"]
    html = page(client, admin, **MARCH, team=world["team"].pk)
    assert totals(html)["requests"] == "1"


def test_the_range_defaults_to_the_last_30_days_and_says_so_when_empty(client, admin, world):
    html = page(client, admin)  # March 2025 is long past
    assert 'id="usage-empty"' in html and "usage-series" not in html and 'id="usage-export"' not in html
    today = timezone.localdate()
    assert f'value="{(today - timedelta(days=29)).isoformat()}"' in html and f'value="{today.isoformat()}"' in html
    add_usage([call(key_id=world["mine"].pk, started_at=timezone.now().isoformat())])
    assert totals(page(client, admin))["requests"] == "1"
    html = page(client, admin, **MARCH, key=world["mine"].pk, adapter="sql")
    assert "No calls match these filters" in html


def test_wrong_filters_are_refused_with_the_reason(client, admin, world):
    html = page(client, admin, 400, since="2025-03-31", until="2025-03-01")
    assert "Until must not be before since." in html and 'id="usage-invalid"' in html
    page(client, admin, 400, deployment="999999")
    page(client, admin, 400, since="yesterday")


def test_the_csv_export_streams_the_filtered_daily_rows_with_names(client, admin, world):
    client.force_login(admin)
    response = client.get("/gateway/usage/export.csv", {**MARCH, "deployment": world["chat"].pk})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="usage-')
    rows = exported(response)
    assert [(row["day"], row["deployment"], row["key"], row["requests"], row["errors"]) for row in rows] == [
        ("2025-03-01", "chat", f"erin-laptop ({world['mine'].prefix}…)", "1", "0"),
        ("2025-03-03", "chat", f"erin-laptop ({world['mine'].prefix}…)", "1", "1"),
    ]
    assert rows[0]["p50_ms"] == "9.0" and rows[0]["team"] == "—" and rows[0]["adapter"] == ""
    assert client.get("/gateway/usage/export.csv", {"since": "nope"}).status_code == 302


def test_a_formula_in_a_key_name_is_neutralized_in_the_csv(client, admin, world):
    key = make_key(user=admin, name="=HYPERLINK(1)")
    add_usage([call(key_id=key.pk, started_at="2025-03-05T00:00:00Z")])
    client.force_login(admin)
    rows = exported(client.get("/gateway/usage/export.csv", {**MARCH, "key": key.pk}))
    assert rows[0]["key"].startswith("'=HYPERLINK(1)")


@pytest.mark.parametrize("role", ["admin", "auditor"])
def test_admins_and_auditors_see_all_usage(client, users, world, role):
    assert totals(page(client, users[role], **MARCH))["requests"] == "8"


def test_an_engineer_sees_only_their_keys_and_their_teams_service_accounts(client, engineer, world, api):
    html = page(client, engineer, **MARCH, group_by="key")
    assert totals(html)["requests"] == "3"
    assert "oscar-secret-project" not in html  # not even among the filter's choices
    assert sorted(table(html)) == sorted(
        [f"erin-laptop ({world['mine'].prefix}…)", f"billing-prod ({world['service'].prefix}…)"]
    )
    page(client, engineer, 400, **MARCH, key=world["theirs"].pk)  # another's key is no valid choice
    client.force_login(engineer)
    rows = exported(client.get("/gateway/usage/export.csv", MARCH))
    assert {row["key_id"] for row in rows} == {str(world["mine"].pk), str(world["service"].pk)}
    report = api(engineer).get("/api/v1/usage/", data={**MARCH, "group_by": "key"}).json()
    assert report["totals"]["requests"] == 3
    assert {row["value"] for row in report["rows"]} == {world["mine"].pk, world["service"].pk}
    api(engineer).get("/api/v1/usage/", 400, data={"key": world["theirs"].pk})


def test_a_user_without_a_role_may_not_open_it_and_the_menu_says_so(client, nobody, engineer, world):
    page(client, nobody, 403)
    assert "usage" not in [item["key"] for item in visible_items(nobody)]
    assert "usage" in [item["key"] for item in visible_items(engineer)]


def test_the_api_reports_grouped_rows_with_percentiles_and_a_per_day_series(api, admin, world):
    report = api(admin).get("/api/v1/usage/", data={**MARCH, "group_by": "deployment"}).json()
    assert report["since"] == "2025-03-01" and report["until"] == "2025-03-31" and report["group_by"] == "deployment"
    assert report["totals"]["requests"] == 8 and report["totals"]["error_rate"] == 0.125
    code, chat = report["rows"]
    assert (code["value"], code["label"], code["requests"]) == (world["code"].pk, "code", 6)
    assert code["prompt_tokens"] == 5010
    assert (chat["label"], chat["errors"], chat["p50_ms"], chat["p99_ms"]) == ("chat", 1, 9.0, 10.0)
    assert [day["requests"] for day in report["series"][:3]] == [1, 5, 2]
    assert api(admin).get("/api/v1/usage/", 400, data={"group_by": "color"}).json()


@pytest.mark.parametrize(("url", "extra"), [("/api/v1/usage.csv", {}), ("/api/v1/usage/", {"format": "csv"})])
def test_the_api_streams_the_same_csv(api, admin, world, url, extra):
    response = api(admin).get(url, data={**MARCH, **extra, "deployment": world["code"].pk})
    assert response["Content-Type"].startswith("text/csv")
    rows = exported(response)
    assert sorted((row["adapter"], row["requests"]) for row in rows) == [("", "5"), ("sql", "1")]


def test_the_api_needs_a_role(api, nobody):
    api(nobody).get("/api/v1/usage/", 403)
    api(None).get("/api/v1/usage/", 401)
