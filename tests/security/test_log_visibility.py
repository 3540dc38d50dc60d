"""A job's log follows the permission on its target, and a server's log shows what requests sent only to those who
may read prompts (view_data). Before: every role with `view` read every deployment's launch and server log, prompts
included (a TGI server at LOG_LEVEL=debug logs each one), through the API, the websocket and the page."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from console import roles
from console.accounts.services.access import object_grant, object_revoke
from console.asgi import application
from console.streams import StreamConsumer
from deployments.backends.tgi.launch import launch_env
from deployments.jobs.services import job_log_line
from deployments.models import Job, JobLogLine
from tests.console.test_websocket import ORIGIN, session_cookie
from tests.factories import DeploymentFactory, JobFactory, TeamFactory, UserFactory
from tests.support.aio import run_async
from tests.support.deploy_fixtures import process_host, ready_artifact, tiny_model_in_store
from tests.support.fixtures import FIXTURES

REQUEST_LINES = (FIXTURES / "tgi-logs" / "request-lines.log").read_text().splitlines()
SECRETS = ("Jane Roe", "condition X", "Patient:")  # the prompt, the output and a stop sequence in those lines


def _served(team=None) -> Job:
    """A deployment owned by `team` whose serve job logged TGI's request lines."""
    deployment = DeploymentFactory(team=team)
    job = JobFactory(kind=Job.Kind.SERVE, target=deployment, params={"deployment": deployment.pk})
    JobLogLine.objects.create(job=job, seq=1, stream="log", text="starting: text-generation-launcher --port 8080")
    for seq, text in enumerate(REQUEST_LINES, start=2):
        JobLogLine.objects.create(job=job, seq=seq, stream="server", text=text)
    Job.objects.filter(pk=job.pk).update(log_seq=len(REQUEST_LINES) + 1)
    return job


def _engineer_of(team):
    engineer = UserFactory(roles=[roles.ENGINEER])
    engineer.groups.add(team)
    return engineer


def _texts(items: list[dict]) -> str:
    return "\n".join(item["text"] for item in items)


@pytest.mark.django_db
def test_an_engineer_of_another_team_cannot_read_a_deployments_job_log(api):
    team = TeamFactory()
    job = _served(team)
    job.failure_detail = "The server ran out of GPU memory.\n" + REQUEST_LINES[3]
    job.save(update_fields=["failure_detail"])
    outsider = UserFactory(roles=[roles.ENGINEER])
    api(outsider).get(f"/api/v1/jobs/{job.pk}/log/", expected=403)  # was 200, the prompts included
    detail = api(outsider).get(f"/api/v1/jobs/{job.pk}/").data
    assert detail["failure_detail"] == "The server ran out of GPU memory."  # the cause, not the log lines
    api(_engineer_of(team)).get(f"/api/v1/jobs/{job.pk}/log/", expected=200)


@pytest.mark.django_db
def test_a_grant_on_the_deployment_opens_its_log_and_a_model_jobs_log_stays_open(api, admin):
    job = _served(TeamFactory())
    granted = UserFactory(roles=[roles.ENGINEER])
    object_grant(actor=admin, grantee=granted, action=roles.VIEW, target=job_target_deployment(job))
    api(granted).get(f"/api/v1/jobs/{job.pk}/log/", expected=200)
    download = JobFactory()  # a model's job: models are visible to every viewer
    JobLogLine.objects.create(job=download, seq=1, text="acme/tiny@abc: 2 file(s)")
    page = api(UserFactory(roles=[roles.ENGINEER])).get(f"/api/v1/jobs/{download.pk}/log/").data
    assert _texts(page["items"]) == "acme/tiny@abc: 2 file(s)"


def job_target_deployment(job: Job):
    from deployments.models import Deployment

    return Deployment.objects.get(pk=job.target_id)


@pytest.mark.django_db
def test_request_content_in_server_lines_is_masked_without_view_data(api, admin, auditor):
    team = TeamFactory()
    job = _served(team)
    engineer = _engineer_of(team)
    masked = api(engineer).get(f"/api/v1/jobs/{job.pk}/log/").data["items"]
    shown = _texts(masked)
    assert not any(secret in shown for secret in SECRETS)
    assert shown.count("[masked: request content]") >= 6  # Input and its second line, Output, four parameters
    assert "Warming up model" in shown and "Success" in shown and "time_per_token" in shown  # the rest stays
    assert _texts(masked[:1]) == "starting: text-generation-launcher --port 8080"
    # A page that starts on the prompt's second line still masks it.
    resumed = api(engineer).get(f"/api/v1/jobs/{job.pk}/log/?after=2&limit=1").data["items"]
    assert _texts(resumed) == "[masked: request content]"
    for reader in (admin, auditor):  # view_data: the lines as the server wrote them
        assert _texts(api(reader).get(f"/api/v1/jobs/{job.pk}/log/").data["items"][1:]) == "\n".join(REQUEST_LINES)


@pytest.mark.django_db
def test_the_deployment_page_offers_the_live_log_only_to_its_readers(client):
    team = TeamFactory()
    job = _served(team)
    deployment = job_target_deployment(job)
    deployment.job = job
    deployment.save(update_fields=["job"])
    client.force_login(UserFactory(roles=[roles.ENGINEER]))
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert f"ws/jobs/{job.pk}/" not in page and 'id="logs-hidden"' in page
    client.force_login(_engineer_of(team))
    assert f"ws/jobs/{job.pk}/" in client.get(f"/deployments/{deployment.pk}/").content.decode()


# -- the websocket --------------------------------------------------------------------------------------------------
async def _socket(user, path: str):
    cookie = await database_sync_to_async(session_cookie)(user)
    socket = WebsocketCommunicator(application, path, headers=[ORIGIN, (b"cookie", cookie)])
    connected, code = await socket.connect()
    return socket, connected, code


async def _until_caught_up(socket) -> list[dict]:
    items = []
    while (message := await socket.receive_json_from(timeout=10))["type"] != "caught_up":
        items += message["items"]
    return items


@pytest.mark.django_db(transaction=True)
def test_the_log_socket_refuses_another_team_and_masks_for_its_own(redis_url):
    run_async(_socket_by_team())


async def _socket_by_team():
    team = await database_sync_to_async(TeamFactory)()
    job = await database_sync_to_async(_served)(team)
    outsider = await database_sync_to_async(UserFactory)(roles=[roles.ENGINEER])
    _, connected, code = await _socket(outsider, f"/ws/jobs/{job.pk}/")
    assert not connected and code == 4403  # it streamed every line before
    member = await database_sync_to_async(_engineer_of)(team)
    socket, connected, _code = await _socket(member, f"/ws/jobs/{job.pk}/")
    assert connected
    await socket.send_json_to({"type": "subscribe", "after": 0})
    shown = _texts(await _until_caught_up(socket))
    assert not any(secret in shown for secret in SECRETS) and "Warming up model" in shown
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
def test_the_log_socket_closes_when_the_grant_is_revoked(redis_url, admin, monkeypatch):
    monkeypatch.setattr(StreamConsumer, "recheck_seconds", 0.0)  # check before every batch
    run_async(_revoked(admin))


async def _revoked(admin):
    job = await database_sync_to_async(_served)(await database_sync_to_async(TeamFactory)())
    deployment = await database_sync_to_async(job_target_deployment)(job)
    engineer = await database_sync_to_async(UserFactory)(roles=[roles.ENGINEER])
    await database_sync_to_async(object_grant)(actor=admin, grantee=engineer, action=roles.VIEW, target=deployment)
    socket, connected, _code = await _socket(engineer, f"/ws/jobs/{job.pk}/")
    assert connected
    await socket.send_json_to({"type": "subscribe", "after": 0})
    assert await _until_caught_up(socket)
    await database_sync_to_async(object_revoke)(actor=admin, grantee=engineer, action=roles.VIEW, target=deployment)
    fresh = await database_sync_to_async(Job.objects.get)(pk=job.pk)
    await database_sync_to_async(job_log_line)(fresh, "health check failed")
    assert await socket.receive_json_from(timeout=10) == {"type": "error", "detail": "permission revoked"}
    assert (await socket.receive_output(timeout=10)).get("code") == 4403


# -- LOG_LEVEL ------------------------------------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("level", ["debug", "TRACE", "warn,text_generation_router=debug", "text_generation_router"])
def test_a_log_level_that_logs_prompts_is_refused(api, admin, level):
    artifact = ready_artifact(process_host(gpus=1), tiny_model_in_store())
    body = {
        "name": "chatty",
        "launch": False,
        "spec_input": {"artifact": artifact.pk, "extra_env": {"LOG_LEVEL": level}},
    }
    refused = api(admin).post("/api/v1/deployments/", body, expected=400).data
    assert "LOG_LEVEL" in str(refused["extra_env"])  # was accepted: the server logged every prompt
    body = {
        "name": "quiet",
        "launch": False,
        "spec_input": {"artifact": artifact.pk, "extra_env": {"LOG_LEVEL": "warn"}},
    }
    api(admin).post("/api/v1/deployments/", body, expected=201)


def test_a_spec_saved_with_debug_before_the_check_launches_at_the_default_level():
    class OldSpec:
        device, extra_env = "cpu", {"LOG_LEVEL": "text_generation_router=debug", "NCCL_DEBUG": "WARN"}

    env = launch_env(OldSpec(), gpu_indexes=[], native=True)
    assert "LOG_LEVEL" not in env and env["NCCL_DEBUG"] == "WARN"
