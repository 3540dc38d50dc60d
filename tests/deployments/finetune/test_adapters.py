"""A fine-tune's LoRA adapter through the console (issue 14 items 6 and 7): deployed on its base model as a new
deployment whose serve.py loads it with --lora-adapters (requests pick it with parameters.adapter_id), added to a
running deployment of the same base as a new spec version with a restart, refused on another base; merged into
its base by a real worker running workers/jobs/merge.py, the full model registered with its lineage and answering
as base + adapter did. Who may deploy (the role, a team's host grant) and the refusals of bad input.

Real parts: a Celery agent on the host's queue (module-scoped, started once), serve.py and the merge program in
the ML environment through the process runtime, two adapters made with peft on the tiny model (B matrices drawn,
not zero, so each changes the greedy output), the reference answers from the same greedy generation in-process.

Timings on 2 shared cores: adapters and references ~10 s, the agent ~10 s, deploy + restart ~40 s, merge + probe
~20 s; the permission and refusal tests run in a rolled-back transaction and start nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.test import Client
from django.urls import reverse
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from deployments.models import Deployment, Job, ModelArtifact
from deployments.serving import services as lifecycle
from tests.conftest import need
from tests.factories import ModelArtifactFactory, TeamFactory
from tests.support.agent import Agent
from tests.support.deploy_fixtures import process_host, ready_artifact, tiny_model_in_store
from tests.support.serve_process import ROOT, ml_env, ml_python
from workers.jobs.manifest import verify_manifest
from workers.runtimes.base import LABEL_DEPLOYMENT, LABEL_JOB
from workers.runtimes.process import ProcessRuntime

HOST = f"adapters-{os.getpid()}"
PROMPT, NEW_TOKENS = "the model server deploys", 8
ADAPTERS = {"a": 1234, "b": 99}  # key -> the seed its LoRA weights are drawn with
DATASET_SHA256 = "5" * 64
TRANSACTIONAL = pytest.mark.django_db(transaction=True)  # a worker process must see the rows

# In the ML environment: each adapter made with peft (init_lora_weights=False: B is not zero) and saved as a
# fine-tune saves it, with its manifest; then the greedy continuation of the prompt without and with each adapter,
# generated as tests/support/finetune_probe.py does (its `continuations`).
MAKE_ADAPTERS = """
import json, sys
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from tests.support.finetune_probe import continuations
from workers.jobs.manifest import write_manifest

base, root, adapters, prompt, n = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5])
config = LoraConfig(r=8, lora_alpha=32, init_lora_weights=False, task_type="CAUSAL_LM",
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
tokenizer = AutoTokenizer.from_pretrained(base)
answers = {"base": continuations(AutoModelForCausalLM.from_pretrained(base), tokenizer, [prompt], n)[0]}
for key, seed in adapters.items():
    torch.manual_seed(seed)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(f"{root}/{key}")
    write_manifest(f"{root}/{key}", step=10, lineage={"method": "lora", "seed": seed})
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), f"{root}/{key}").eval()
    answers[key] = continuations(model, tokenizer, [prompt], n)[0]
print(json.dumps(answers))
"""


# -- module-wide: files and one agent ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files():
    """The tiny model in the store, two adapters beside it and the reference answers ("base", "a", "b")."""
    need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py, peft and the merge program")
    base = tiny_model_in_store()
    root = Path(settings.MODEL_STORE) / "tests" / f"adapters-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    done = subprocess.run(
        [ml_python(), "-c", MAKE_ADAPTERS, str(base), str(root), json.dumps(ADAPTERS), PROMPT, str(NEW_TOKENS)],
        env=ml_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    # Each adapter must change the answer, or the comparisons below prove nothing.
    assert len({answers["base"], answers["a"], answers["b"]}) == 3, answers
    yield {"base": base, "root": root, "answers": answers}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(files, redis_url, django_db_setup, django_db_blocker, tmp_path_factory):
    """A real Celery agent for HOST, shared by the module's transactional tests (each test's rows are new, the
    queue is the same)."""
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    with django_db_blocker.unblock():
        worker = Agent(redis_url, HOST, CHECKPOINT_DIR=str(checkpoints), JOB_PROGRAM_STOP_GRACE_SECONDS="20")
    yield worker
    worker.stop()
    for handle in ProcessRuntime().find({}):
        if handle.labels.get(LABEL_JOB) or handle.labels.get(LABEL_DEPLOYMENT):
            ProcessRuntime().remove(handle)


# -- per test: the registry rows ---------------------------------------------------------------------------------
def register_adapter(base: ModelArtifact, directory: Path, name: str, **fields) -> ModelArtifact:
    """An adapter as finetune_finished registers it: kind adapter, its base, the manifest and a lineage."""
    manifest = json.loads((directory / "manifest.json").read_text())
    lineage = {
        "base": f"{base.repo.repo_id}@{base.repo.commit}",
        "base_artifact": base.pk,
        "dataset": "codes",
        "dataset_version": 1,
        "dataset_sha256": DATASET_SHA256,
        "method": "lora",
        "hyperparameters": {"lora_r": 8, "seed": 11},
        "job": 1,
    }
    return ModelArtifactFactory(
        repo__repo_id=f"finetunes/{name}",
        repo__commit="a" * 40,
        host=base.host,
        path=str(directory),
        kind=ModelArtifact.Kind.ADAPTER,
        base=base,
        lineage=lineage,
        manifest=manifest,
        files_sha256={f["path"]: f["sha256"] for f in manifest["files"]},
        **fields,
    )


@pytest.fixture
def world(files):
    host = process_host(HOST)  # no GPU: the adapter's deployment runs serve.py on the CPU
    base = ready_artifact(host, files["base"])
    return {
        "host": host,
        "base": base,
        "a": register_adapter(base, files["root"] / "a", "tiny-llama-ft-a"),
        "b": register_adapter(base, files["root"] / "b", "tiny-llama-ft-b"),
    }


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def wait_for(fetch, done, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {value}")


def running(deployment: Deployment, *, after_job: int | None = None) -> Deployment:
    """Wait until the deployment runs (with a job other than `after_job`: after a restart)."""

    def fetch():
        deployment.refresh_from_db()
        return deployment

    wait_for(
        fetch,
        lambda d: d.state == Deployment.State.FAILED or (d.state == Deployment.State.RUNNING and d.job_id != after_job),
        240,
        "the deployment to run",
    )
    assert deployment.state == Deployment.State.RUNNING, (deployment.failure_cause, deployment.failure_detail)
    return deployment


def generate(deployment: Deployment, adapter_id: str | None = None) -> str:
    """Greedy text from the deployment's server, as the console calls it (its endpoint, its server key)."""
    parameters = {"max_new_tokens": NEW_TOKENS, "do_sample": False}
    if adapter_id is not None:
        parameters["adapter_id"] = adapter_id
    response = requests.post(
        f"{deployment.endpoint}/generate",
        json={"inputs": PROMPT, "parameters": parameters},
        headers={"Authorization": f"Bearer {deployment.server_key.reveal()}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["generated_text"]


def stop(admin, deployment: Deployment) -> None:
    deployment.refresh_from_db()
    if deployment.state not in (Deployment.State.STOPPED, Deployment.State.FAILED):
        lifecycle.deployment_stop(actor=admin, deployment=deployment)
    wait_for(
        lambda: Deployment.objects.get(pk=deployment.pk).state,
        lambda s: s in (Deployment.State.STOPPED, Deployment.State.FAILED),
        60,
        "the stop",
    )
    wait_for(lambda: ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)}), lambda f: f == [], 30, "no server")


# -- item 7: deploy, use, add to a running deployment ------------------------------------------------------------
@TRANSACTIONAL
def test_an_adapter_deployed_from_the_model_page_answers_by_adapter_id_and_a_second_one_restarts_it(
    agent, files, world, admin, api
):
    a, b, answers = world["a"], world["b"], files["answers"]
    response = logged_in(admin).post(reverse("adapter-deploy", args=[a.pk]), {"deployment": ""})
    deployment = Deployment.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("deployment-detail", args=[deployment.pk])
    try:
        assert deployment.name == "tiny-llama-ft-a" and deployment.spec.artifact == world["base"]
        assert deployment.spec.lora_adapters == [{"name": "tiny-llama-ft-a", "path": a.path}]
        running(deployment)
        assert deployment.command[deployment.command.index("--lora-adapters") + 1] == f"tiny-llama-ft-a={a.path}"
        # parameters.adapter_id picks the adapter (TGI's way); without it the base model answers.
        assert generate(deployment, "tiny-llama-ft-a") == answers["a"]
        assert generate(deployment) == answers["base"] != answers["a"]
        deployed = AuditEvent.objects.get(action="adapter.deployed", target_id=str(a.pk))
        assert deployed.actor_id == admin.pk and deployed.details["deployment"] == deployment.name
        assert deployed.details["spec_version"] == 1 and deployed.details["adapter_id"] == "tiny-llama-ft-a"

        # The second adapter, added to the running deployment through the API: version 2, restarted.
        first_job = deployment.job_id
        answer = api(admin).post(f"/api/v1/adapters/{b.pk}/deploy/", {"deployment": deployment.pk}).data
        assert answer["id"] == deployment.pk and Deployment.objects.count() == 1
        deployment.refresh_from_db()
        assert deployment.spec.version == 2 and "lora_adapters" in deployment.spec.diff
        assert [x["name"] for x in deployment.spec.lora_adapters] == ["tiny-llama-ft-a", "tiny-llama-ft-b"]
        assert AuditEvent.objects.filter(action="deployment.restart_requested", target_id=str(deployment.pk)).exists()
        running(deployment, after_job=first_job)
        assert Job.objects.get(pk=first_job).status == Job.Status.CANCELLED
        assert generate(deployment, "tiny-llama-ft-b") == answers["b"]
        assert generate(deployment, "tiny-llama-ft-a") == answers["a"]
        assert generate(deployment) == answers["base"]
        second = AuditEvent.objects.get(action="adapter.deployed", target_id=str(b.pk))
        assert second.details["spec_version"] == 2 and second.details["deployment"] == deployment.name
        assert second.details["restarted"] and not deployed.details["restarted"]
    finally:
        stop(admin, deployment)


@pytest.mark.django_db
def test_an_adapter_is_added_only_to_a_deployment_of_its_base(files, world, admin, api, tmp_path):
    other_base = ready_artifact(world["host"], files["base"], repo_id="tests/other-model")
    other = lifecycle.deployment_create(
        actor=admin, name="other", spec={"artifact": other_base.pk, "device": "cpu"}, launch=False
    )
    refused = api(admin).post(f"/api/v1/adapters/{world['a'].pk}/deploy/", {"deployment": other.pk}, expected=400)
    assert refused.data == {
        "deployment": ["other serves another model; an adapter is added to a deployment of its base."]
    }
    other.refresh_from_db()
    assert other.spec.version == 1 and other.spec.lora_adapters == []
    assert not AuditEvent.objects.filter(action="adapter.deployed").exists()


@pytest.mark.django_db
def test_an_adapter_added_to_a_starting_deployment_restarts_it_and_a_stopped_one_gets_it_at_its_next_launch(
    world, admin, api
):
    spec = {"artifact": world["base"].pk, "device": "cpu"}
    starting = lifecycle.deployment_create(actor=admin, name="starting", spec=spec)
    stopped = lifecycle.deployment_create(actor=admin, name="stopped", spec=spec, launch=False)
    assert starting.state == Deployment.State.STARTING and stopped.state == Deployment.State.STOPPED
    for deployment in (starting, stopped):
        api(admin).post(f"/api/v1/adapters/{world['a'].pk}/deploy/", {"deployment": deployment.pk})
        deployment.refresh_from_db()
        assert deployment.spec.version == 2 and deployment.spec.lora_adapters[0]["name"] == "tiny-llama-ft-a"
    # The starting server lacks the adapter: its job is cancelled and it launches again with version 2.
    assert starting.state == Deployment.State.STOPPING and starting.restart_requested
    assert starting.job.cancel_requested
    assert stopped.state == Deployment.State.STOPPED
    events = [e.details for e in AuditEvent.objects.filter(action="adapter.deployed").order_by("id")]
    assert [(e["deployment"], e["restarted"]) for e in events] == [("starting", True), ("stopped", False)]


@pytest.mark.django_db
def test_deploying_an_adapter_needs_deploy_by_role_or_by_a_team_host_grant(world, admin, engineer, api):
    a = world["a"]
    page = reverse("model-detail", args=[a.pk])
    assert 'id="adapter-deploy-form"' in logged_in(admin).get(page).content.decode()
    # An engineer holds no deploy: no button (merging, which they may, stays), and the API refuses.
    shown = logged_in(engineer).get(page).content.decode()
    assert 'id="adapter-deploy-form"' not in shown and 'id="adapter-merge-form"' in shown
    assert "tiny-llama-ft-a" in shown  # the adapter_id requests use
    api(engineer).post(f"/api/v1/adapters/{a.pk}/deploy/", {}, expected=403)
    assert logged_in(engineer).post(reverse("adapter-deploy", args=[a.pk])).status_code == 403
    assert not Deployment.objects.exists()
    # A team granted deploy on the adapter's host: its engineer deploys, the deployment belongs to that team.
    team = TeamFactory(name="vision")
    team.user_set.add(engineer)
    assign_perm("deployments.deploy_host", team, world["host"])
    assert 'id="adapter-deploy-form"' in logged_in(engineer).get(page).content.decode()
    made = api(engineer).post(f"/api/v1/adapters/{a.pk}/deploy/", {}).data
    deployment = Deployment.objects.get(pk=made["id"])
    assert deployment.team == team and deployment.host == world["host"]
    assert deployment.state == Deployment.State.STARTING
    assert AuditEvent.objects.filter(action="adapter.deployed", actor_id=engineer.pk, target_id=str(a.pk)).exists()
    # Two such teams: the page asks which owns the new deployment, the API wants `team`.
    speech = TeamFactory(name="speech")
    speech.user_set.add(engineer)
    assign_perm("deployments.deploy_host", speech, world["host"])
    assert 'id="adapter-deploy-team"' in logged_in(engineer).get(page).content.decode()
    refused = api(engineer).post(f"/api/v1/adapters/{a.pk}/deploy/", {"name": "speech-a"}, expected=400)
    assert refused.data == {"team": ["Several of your teams may deploy: choose the one that owns it."]}
    made = api(engineer).post(f"/api/v1/adapters/{a.pk}/deploy/", {"name": "speech-a", "team": "speech"}).data
    assert Deployment.objects.get(pk=made["id"]).team == speech


# -- item 6: merge -----------------------------------------------------------------------------------------------
@TRANSACTIONAL
def test_merging_an_adapter_registers_a_full_model_with_lineage_that_answers_as_base_plus_adapter(
    agent, files, world, engineer, api
):
    a, base = world["a"], world["base"]
    response = logged_in(engineer).post(reverse("adapter-merge", args=[a.pk]))
    job = Job.objects.get(kind=Job.Kind.MERGE)
    assert response.status_code == 302 and response["Location"] == reverse("job-detail", args=[job.pk])
    wait_for(lambda: Job.objects.get(pk=job.pk).status, lambda s: s in Job.Status.terminal(), 240, "the merge")
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, (job.failure_cause, job.failure_detail)
    merged = ModelArtifact.objects.get(produced_by=job)
    try:
        assert merged.kind == ModelArtifact.Kind.MODEL and merged.base == base and merged.host == world["host"]
        assert Path(merged.path).is_relative_to(Path(world["host"].model_store)) and verify_manifest(merged.path) == []
        lineage = merged.lineage
        assert lineage["merged_from"] == f"finetunes/tiny-llama-ft-a@{'a' * 40}" and lineage["adapter_artifact"] == a.pk
        assert lineage["base"] == f"tests/tiny-llama@{'0' * 40}" and lineage["dataset_sha256"] == DATASET_SHA256
        assert lineage["job"] == job.pk and lineage["merge_seconds"] > 0
        # The merged model's greedy answer is base + adapter's (the probe the fine-tune program tests use).
        probe = {"base": str(files["base"]), "merged": merged.path, "prompts": [PROMPT], "max_new_tokens": NEW_TOKENS}
        done = subprocess.run(
            [ml_python(), str(ROOT / "tests" / "support" / "finetune_probe.py"), json.dumps(probe)],
            env=ml_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["merged"] == [files["answers"]["a"]]
        merged_event = AuditEvent.objects.get(action="adapter.merged", target_id=str(merged.pk))
        assert merged_event.actor_name == f"agent:{HOST}"
        assert AuditEvent.objects.filter(action="adapter.merge_requested", actor_id=engineer.pk).exists()
        # The pages and the API show where it came from.
        page = logged_in(engineer).get(reverse("model-detail", args=[merged.pk])).content.decode()
        assert "Merged from" in page and "finetunes/tiny-llama-ft-a@" in page and DATASET_SHA256 in page
        assert reverse("model-detail", args=[a.pk]) in page and reverse("model-detail", args=[base.pk]) in page
        assert 'id="adapter-deploy-form"' not in page  # a full model is deployed as any model is
        adapter_page = logged_in(engineer).get(reverse("model-detail", args=[a.pk])).content.decode()
        assert f'Merged into: <a href="{reverse("model-detail", args=[merged.pk])}">' in adapter_page
        base_page = logged_in(engineer).get(reverse("model-detail", args=[base.pk])).content.decode()
        assert reverse("model-detail", args=[merged.pk]) in base_page  # "made from this model"
        shown = api(engineer).get(f"/api/v1/models/{merged.pk}/").data
        assert shown["kind"] == "model" and shown["base"] == base.pk
        assert shown["lineage"]["merged_from"] == lineage["merged_from"]
        assert shown["lineage"]["dataset_sha256"] == DATASET_SHA256
    finally:
        shutil.rmtree(merged.path, ignore_errors=True)


# -- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_merging_a_full_model_or_deploying_an_adapter_that_is_not_ready_is_refused_plainly(world, admin, api):
    refused = api(admin).post(f"/api/v1/adapters/{world['base'].pk}/merge/", {}, expected=400)
    assert refused.data == {"non_field_errors": ["Only a LoRA adapter can be merged into its base model."]}
    refused = api(admin).post(f"/api/v1/adapters/{world['base'].pk}/deploy/", {}, expected=400)
    assert refused.data == {"non_field_errors": ["Only a LoRA adapter is deployed on a base model."]}
    page = logged_in(admin).post(reverse("adapter-merge", args=[world["base"].pk]), follow=True)
    assert "Only a LoRA adapter can be merged into its base model." in page.content.decode()
    ModelArtifact.objects.filter(pk=world["b"].pk).update(status=ModelArtifact.Status.DOWNLOADING)
    refused = api(admin).post(f"/api/v1/adapters/{world['b'].pk}/deploy/", {}, expected=400)
    assert refused.data == {
        "non_field_errors": [
            f"finetunes/tiny-llama-ft-b is downloading on {HOST}, not ready: deploy the adapter once it is."
        ]
    }
    refused = api(admin).post(f"/api/v1/adapters/{world['b'].pk}/merge/", {}, expected=400)
    assert refused.data == {"non_field_errors": ["The adapter and its base model must both be ready."]}
    api(admin).post(f"/api/v1/adapters/{world['a'].pk}/merge/", {"precision": "fp8"}, expected=400)
    api(admin).post("/api/v1/adapters/999999/deploy/", {}, expected=404)
    assert not Deployment.objects.exists() and not Job.objects.exists()
