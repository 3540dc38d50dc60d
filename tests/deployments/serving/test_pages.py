"""Deployment pages: the list (search, filter, empty state), the deploy form (the planner refuses an oversized
spec with its reason and nothing is created; a fitting one is reviewed, then created and launched), edit and
rollback (new versions with diffs), stop and delete (with confirmation), the detail page's log panes and command,
the playground's permission, the image allow-list, and the plan API the form calls."""

from __future__ import annotations

import re

import pytest
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from deployments.models import AllowedImage, Deployment, DeploymentSpec, Gpu, Host, Job, ModelArtifact
from tests.factories import DeploymentSpecFactory, GpuFactory, HostFactory, JobFactory, ModelArtifactFactory
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.django_db
GB = 10**9


@pytest.fixture
def host(db):
    """A process-runtime host with one small GPU (1 GB): a tiny model fits, a 7B model does not."""
    node = HostFactory(name="pages-node")
    GpuFactory(host=node, index=0, name="Small GPU", memory_total=1 * GB)
    return node


def artifact_at(host, directory, repo_id: str) -> ModelArtifact:
    return ModelArtifactFactory(
        repo__source__name="pages-hub", repo__repo_id=repo_id, repo__commit="d" * 40, host=host, path=str(directory)
    )


@pytest.fixture
def tiny(host, tmp_path):
    return artifact_at(host, write_llama_dir(tmp_path / "tiny", "tiny"), "org/tiny-llama")


@pytest.fixture
def big(host, tmp_path):
    return artifact_at(host, write_llama_dir(tmp_path / "big", "7b"), "org/llama-7b")


def make_deployment(artifact, name: str, state=Deployment.State.STOPPED, **spec) -> Deployment:
    """A deployment row with spec version 1, made directly (no service, no job)."""
    first = DeploymentSpecFactory(
        deployment__name=name,
        deployment__state=state,
        artifact=artifact,
        current=True,
        **{"max_input_tokens": 128, "max_total_tokens": 256, **spec},
    )
    return first.deployment


def form_data(artifact, **extra) -> dict:
    return {
        "artifact": artifact.pk,
        "name": "tiny-chat",
        "restart_policy": "on-failure",
        "device": "gpu",
        "max_input_tokens": 128,
        "max_total_tokens": 256,
        "max_concurrent_requests": 128,
        "cuda_memory_fraction": 1.0,
        **extra,
    }


def field_error(response, field: str) -> str:
    page = response.content.decode()
    marker = f'data-field-error="{field}">'
    assert marker in page, page[page.find("<main") :][:4000]
    return page.split(marker, 1)[1].split("</div>", 1)[0]


def page(response) -> str:
    return response.content.decode()


# -- list -----------------------------------------------------------------------------------------------------------


def test_empty_list_offers_deploying_to_those_who_may(client, admin, engineer):
    client.force_login(admin)
    body = page(client.get("/deployments/"))
    assert 'id="deployments-empty"' in body and 'id="deploy-model-empty"' in body
    client.force_login(engineer)
    body = page(client.get("/deployments/"))
    assert 'id="deployments-empty"' in body
    assert 'id="deploy-model-empty"' not in body and 'id="deploy-model"' not in body


def test_list_shows_rows_and_searches_and_filters_by_state(client, engineer, tiny):
    make_deployment(tiny, "alpha-chat", state=Deployment.State.RUNNING)
    make_deployment(tiny, "beta-code", state=Deployment.State.FAILED)
    client.force_login(engineer)
    body = page(client.get("/deployments/"))
    assert 'data-deployment="alpha-chat"' in body and 'data-deployment="beta-code"' in body
    assert re.search(r'class="badge text-bg-success" data-state="running"', body)
    assert re.search(r'class="badge text-bg-danger" data-state="failed"', body)
    assert "org/tiny-llama" in body and "v1" in body

    body = page(client.get("/deployments/?q=alpha"))
    assert 'data-deployment="alpha-chat"' in body and 'data-deployment="beta-code"' not in body
    body = page(client.get("/deployments/?q=tiny-llama&state=failed"))
    assert 'data-deployment="beta-code"' in body and 'data-deployment="alpha-chat"' not in body
    body = page(client.get("/deployments/?state=stopping"))
    assert "No deployment matches these filters." in body


def test_list_paginates(client, admin, tiny):
    for n in range(27):
        make_deployment(tiny, f"d-{n:02d}")
    client.force_login(admin)
    first = page(client.get("/deployments/?state=stopped"))
    assert first.count("data-deployment=") == 25 and "page=2&amp;state=stopped" in first
    assert page(client.get("/deployments/?state=stopped&page=2")).count("data-deployment=") == 2


# -- deploying ------------------------------------------------------------------------------------------------------


def test_the_form_offers_ready_models_and_the_hosts_gpus(client, admin, tiny):
    client.force_login(admin)
    body = page(client.get("/deployments/new/"))
    assert "org/tiny-llama@dddddddddd on pages-node" in body
    assert re.search(r'name="gpu_indexes" value="\d+" id="gpu-\d+" data-index="0"', body)
    assert 'data-plan-url="/api/v1/deployments/plan/"' in body and 'id="plan-command"' in body


def test_an_oversized_spec_is_refused_with_the_planners_reason_and_nothing_is_created(client, admin, big):
    client.force_login(admin)
    for extra in ({"review": "1"}, {"confirm": "1"}):
        response = client.post("/deployments/new/", form_data(big, name="too-big", **extra))
        assert response.status_code == 400
        reason = field_error(response, "artifact")
        assert "needs 14 GB" in reason and "1 GPUs with 14 GB free" in reason
    assert not Deployment.objects.exists() and not DeploymentSpec.objects.exists() and not Job.objects.exists()


def test_a_fitting_spec_is_reviewed_then_deployed_and_launched(
    client, admin, tiny, host, django_capture_on_commit_callbacks
):
    client.force_login(admin)
    review = client.post("/deployments/new/", form_data(tiny, review="1"))
    assert review.status_code == 200
    body = page(review)
    assert 'id="confirm-deploy"' in body and 'data-fits="yes"' in body
    command = re.search(r'<pre[^>]*id="plan-command">(.*?)</pre>', body, re.S).group(1)
    assert command.startswith("text-generation-launcher --model-id ") and "--max-total-tokens 256" in command
    assert not Deployment.objects.exists()

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post("/deployments/new/", form_data(tiny, confirm="1"))
    deployment = Deployment.objects.get(name="tiny-chat")
    assert response.status_code == 302 and response["Location"] == f"/deployments/{deployment.pk}/"
    assert deployment.state in (Deployment.State.STARTING, Deployment.State.DOWNLOADING)
    assert deployment.spec.version == 1 and deployment.gpu_indexes == [0] and deployment.host == host
    job = deployment.job
    assert job.kind == Job.Kind.SERVE and job.queue == host.queue and job.dispatched_at is not None
    assert callbacks, "the job is sent to the host's queue after commit"
    assert AuditEvent.objects.filter(action="deployment.created", target_id=str(deployment.pk)).exists()


def test_a_bad_spec_shows_the_service_error_under_its_field(client, admin, tiny):
    client.force_login(admin)
    response = client.post("/deployments/new/", form_data(tiny, review="1", max_input_tokens=300))
    assert response.status_code == 400
    assert "must be less than max total tokens" in field_error(response, "max_input_tokens")
    response = client.post("/deployments/new/", form_data(tiny, review="1", extra_env="{not json"))
    assert response.status_code == 400 and "Not valid JSON" in field_error(response, "extra_env")


def test_a_taken_name_is_refused_at_the_review(client, admin, tiny):
    make_deployment(tiny, "tiny-chat")
    client.force_login(admin)
    response = client.post("/deployments/new/", form_data(tiny, review="1"))
    assert response.status_code == 400 and "A deployment named tiny-chat exists." in field_error(response, "name")


def test_gpus_of_another_host_are_refused(client, admin, tiny):
    other = HostFactory(name="other-node", status=Host.Status.MANUAL)
    foreign = GpuFactory(host=other, name="Other", memory_total=80 * GB, health=Gpu.Health.UNKNOWN)
    client.force_login(admin)
    response = client.post("/deployments/new/", form_data(tiny, review="1", gpu_indexes=[foreign.pk]))
    assert response.status_code == 400 and "pages-node" in field_error(response, "gpu_indexes")


# -- detail, edit, rollback -----------------------------------------------------------------------------------------


def test_the_detail_page_shows_both_log_panes_the_command_and_state(client, engineer, tiny, host):
    deployment = make_deployment(tiny, "logged", state=Deployment.State.RUNNING)
    job = JobFactory(
        kind=Job.Kind.SERVE,
        status=Job.Status.RUNNING,
        queue=host.queue,
        target=deployment,
        params={"spec": deployment.spec_id},
    )
    Deployment.objects.filter(pk=deployment.pk).update(
        job=job,
        host=host,
        gpu_indexes=[0],
        endpoint="http://127.0.0.1:9999",
        command=["text-generation-launcher", "--port", "9999"],
    )
    client.force_login(engineer)
    body = page(client.get(f"/deployments/{deployment.pk}/"))
    assert f'data-ws="/ws/jobs/{job.pk}/"' in body
    assert 'id="launch-log" data-streams="log event"' in body and 'id="server-log" data-streams="server"' in body
    assert re.search(r'id="command">text-generation-launcher --port 9999</pre>', body)
    assert f'data-api="/api/v1/deployments/{deployment.pk}/"' in body
    assert "http://127.0.0.1:9999" in body and 'id="deployment-states"' in body
    # engineers may look, not act: no action forms, no playground without a grant
    assert 'id="stop-form"' not in body and 'id="edit-link"' not in body and 'id="playground-link"' not in body


def test_the_detail_page_of_a_stopped_deployment_previews_the_command(client, admin, tiny):
    deployment = make_deployment(tiny, "previewed")
    client.force_login(admin)
    body = page(client.get(f"/deployments/{deployment.pk}/"))
    assert 'id="logs-none"' in body
    assert re.search(r'id="command">text-generation-launcher --model-id \S+ --hostname 127.0.0.1 --port PORT', body)
    # stopped: launch and delete offered, stop and restart hidden until the state allows them
    assert re.search(r'<form [^>]*id="launch-form" data-action="launch" data-confirm=', body)
    assert re.search(r'<form [^>]*id="stop-form" data-action="stop" hidden', body)
    assert 'id="confirm-modal"' in body


def test_edit_makes_version_2_with_a_diff_and_rollback_makes_version_3(client, admin, tiny):
    deployment = make_deployment(tiny, "versioned", state=Deployment.State.RUNNING)
    client.force_login(admin)
    form = page(client.get(f"/deployments/{deployment.pk}/edit/"))
    assert 'name="max_total_tokens" value="256"' in form and f'data-deployment="{deployment.pk}"' in form

    data = form_data(tiny, max_total_tokens=512, note="longer answers")
    data.pop("name")
    response = client.post(f"/deployments/{deployment.pk}/edit/", data, follow=True)
    deployment.refresh_from_db()
    assert deployment.spec.version == 2 and deployment.spec.diff == {"max_total_tokens": [256, 512]}
    body = page(response)
    assert "Version 2 saved." in body and "restart it to apply version 2" in body
    assert re.search(r'data-diff="2">.*data-field="max_total_tokens".*<code>256</code>.*<code>512</code>', body, re.S)
    assert 'data-rollback="1"' in body and 'data-rollback="2"' not in body

    response = client.post(f"/deployments/{deployment.pk}/rollback/", {"version": 1}, follow=True)
    deployment.refresh_from_db()
    assert deployment.spec.version == 3 and deployment.spec.diff == {"max_total_tokens": [512, 256]}
    assert deployment.spec.note == "rollback to v1"
    assert "Version 3 restores version 1." in page(response)


def test_an_edit_that_changes_nothing_is_an_error(client, admin, tiny):
    deployment = make_deployment(tiny, "unchanged")
    client.force_login(admin)
    data = form_data(tiny)
    data.pop("name")
    response = client.post(f"/deployments/{deployment.pk}/edit/", data)
    assert response.status_code == 400 and "Nothing changed." in page(response)
    assert deployment.specs.count() == 1


def test_stop_then_delete(client, admin, tiny):
    deployment = make_deployment(tiny, "doomed", state=Deployment.State.RUNNING)
    client.force_login(admin)
    body = page(client.get(f"/deployments/{deployment.pk}/"))
    assert re.search(r'id="stop-form" data-action="stop" data-confirm="Stop doomed\?', body)
    assert re.search(r'id="delete-form" data-action="delete" hidden data-confirm="Delete doomed', body)

    response = client.post(f"/deployments/{deployment.pk}/delete/", follow=True)
    assert "doomed is running, so it cannot be deleted now" in page(response)
    assert Deployment.objects.filter(pk=deployment.pk).exists()

    response = client.post(f"/deployments/{deployment.pk}/stop/")
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert deployment.state == Deployment.State.STOPPED

    response = client.post(f"/deployments/{deployment.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/deployments/"
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    assert AuditEvent.objects.filter(action="deployment.deleted", target_id=str(deployment.pk)).exists()


def test_a_grant_lets_an_engineer_edit_one_deployment(client, engineer, tiny):
    deployment = make_deployment(tiny, "granted")
    other = make_deployment(tiny, "not-granted")
    assign_perm("deployments.deploy_deployment", engineer, deployment)
    client.force_login(engineer)
    assert client.get(f"/deployments/{deployment.pk}/edit/").status_code == 200
    assert client.get(f"/deployments/{other.pk}/edit/").status_code == 403
    assert client.get("/deployments/new/").status_code == 403


# -- playground -----------------------------------------------------------------------------------------------------


def test_the_playground_needs_use_deployment_on_that_deployment(client, engineer, tiny):
    deployment = make_deployment(tiny, "chatty", state=Deployment.State.RUNNING)
    Deployment.objects.filter(pk=deployment.pk).update(endpoint="http://127.0.0.1:9")
    client.force_login(engineer)
    assert client.get(f"/deployments/{deployment.pk}/playground/").status_code == 403
    assign_perm("deployments.use_deployment_deployment", engineer, deployment)
    response = client.get(f"/deployments/{deployment.pk}/playground/")
    assert response.status_code == 200
    body = page(response)
    assert f'data-ws="/ws/deployments/{deployment.pk}/playground/" data-running="1"' in body
    assert 'data-mode="completion"' in body and 'data-mode="chat"' in body and 'id="do_sample"' in body
    assert 'id="not-running"' not in body
    assert 'id="playground-link"' in page(client.get(f"/deployments/{deployment.pk}/"))


def test_the_playground_of_a_stopped_deployment_explains_and_is_disabled(client, admin, tiny):
    deployment = make_deployment(tiny, "asleep")
    client.force_login(admin)
    body = page(client.get(f"/deployments/{deployment.pk}/playground/"))
    assert 'id="not-running"' in body and "works only while the deployment runs" in body
    assert '<fieldset disabled id="playground-controls">' in body and 'data-running="0"' in body


# -- images ---------------------------------------------------------------------------------------------------------


def test_images_are_added_and_removed(client, admin, engineer):
    client.force_login(engineer)
    assert client.get("/deployments/images/").status_code == 403
    client.force_login(admin)
    assert 'id="images-empty"' in page(client.get("/deployments/images/"))
    response = client.post(
        "/deployments/images/",
        {"reference": "ghcr.io/huggingface/text-generation-inference:3.3.5", "digest": "sha256:" + "a" * 64},
    )
    assert response.status_code == 302
    image = AllowedImage.objects.get()
    assert image.pinned == "ghcr.io/huggingface/text-generation-inference@sha256:" + "a" * 64
    again = client.post("/deployments/images/", {"reference": image.reference})
    assert again.status_code == 400 and "already allowed" in field_error(again, "reference")
    bad = client.post("/deployments/images/", {"reference": "x:1", "digest": "md5:1"})
    assert bad.status_code == 400 and field_error(bad, "digest")
    body = page(client.get("/deployments/images/"))
    assert re.search(r'data-confirm="Remove ghcr.io/huggingface/text-generation-inference:3.3.5 from', body)
    assert client.post(f"/deployments/images/{image.pk}/remove/").status_code == 302
    assert not AllowedImage.objects.exists()
    assert AuditEvent.objects.filter(action="image.removed").exists()


# -- the plan API the form calls ------------------------------------------------------------------------------------


def test_the_plan_api_returns_the_verdict_and_the_command(api, admin, tiny, big):
    client = api(admin)
    spec = {"artifact": tiny.pk, "max_input_tokens": 128, "max_total_tokens": 256}
    result = client.post("/api/v1/deployments/plan/", {"spec": spec, "name": "preview"}, expected=200).json()
    assert result["verdict"]["fits"] is True and result["verdict"]["gpu_indexes"] == [0]
    assert result["verdict"]["per_gpu_bytes"] > 0 and result["verdict"]["num_shard"] == 1
    assert result["command"][0] == "text-generation-launcher" and "--max-total-tokens" in result["command"]

    refused = client.post("/api/v1/deployments/plan/", {"spec": {"artifact": big.pk}}, expected=200).json()
    assert refused["verdict"]["fits"] is False and "no online host has 1 GPUs" in refused["verdict"]["reason"]

    bad = client.post("/api/v1/deployments/plan/", {"spec": {**spec, "max_input_tokens": 999}}, expected=400).json()
    assert "max_input_tokens" in bad
    assert not Deployment.objects.exists()


def test_the_plan_api_counts_the_edited_deployments_own_gpus_as_free(api, admin, engineer, tiny):
    from deployments.serving import services as lifecycle

    deployment = lifecycle.deployment_create(
        actor=admin,
        name="holder",
        spec={"artifact": tiny.pk, "max_input_tokens": 128, "max_total_tokens": 256, "cuda_memory_fraction": 1.0},
    )
    spec = {"artifact": tiny.pk, "max_input_tokens": 128, "max_total_tokens": 300}
    # Its reservation takes most of the 1 GB GPU: a second copy does not fit, the edit of this one does.
    others = api(admin).post("/api/v1/deployments/plan/", {"spec": spec}, expected=200).json()
    assert others["verdict"]["fits"] is False
    mine = (
        api(admin).post("/api/v1/deployments/plan/", {"spec": spec, "deployment": deployment.pk}, expected=200).json()
    )
    assert mine["verdict"]["fits"] is True
    # an engineer plans edits of the deployments granted to them, and nothing else
    api(engineer).post("/api/v1/deployments/plan/", {"spec": spec, "deployment": deployment.pk}, expected=403)
    assign_perm("deployments.deploy_deployment", engineer, deployment)
    api(engineer).post("/api/v1/deployments/plan/", {"spec": spec, "deployment": deployment.pk}, expected=200)
    api(engineer).post("/api/v1/deployments/plan/", {"spec": spec}, expected=403)


def test_the_pages_speak_chinese(client, admin, tiny):
    deployment = make_deployment(tiny, "zh-chat", state=Deployment.State.STOPPED)
    client.force_login(admin)
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    body = page(client.get(f"/deployments/{deployment.pk}/"))
    assert "已停止" in body and "命令行" in body and "版本" in body and "Versions" not in body
    body = page(client.get("/deployments/new/"))
    assert "部署模型" in body and "规划器" in body and "Deploy a model" not in body
