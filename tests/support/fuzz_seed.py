"""One object of each kind the console addresses by id, for the fuzz tests: the API's `{id}` and the pages'
`<pk>` find something real, so the fuzz reaches past the 404."""

from __future__ import annotations

from audit.models import AuditEvent
from console import roles
from console.accounts.models import ApiToken
from console.accounts.services.access import object_grant
from console.accounts.services.tokens import token_create
from deployments.models import AllowedEndpoint, AllowedImage, Job, JobLogLine, ModelArtifact
from deployments.monitoring.models import HealthCheckRun
from tests.factories import (
    CredentialFactory,
    DeploymentSpecFactory,
    GpuFactory,
    JobFactory,
    ModelArtifactFactory,
    ModelSourceFactory,
    TeamFactory,
    UserFactory,
)


def seed_objects(admin, engineer) -> dict[str, int]:
    """Objects visible to both roles; returns the API resource name (hosts, audit/events...) -> id. The model is
    a ready copy nothing uses (it can be deleted or collected); a second copy is downloading (it can be
    cancelled: "models/downloading"); the deployment has two versions (it can be rolled back)."""
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")  # the local Hub of the hub_server fixture
    source = ModelSourceFactory()
    gpu = GpuFactory()
    artifact = ModelArtifactFactory(host=gpu.host, repo__source=source)
    spec = DeploymentSpecFactory(artifact=artifact)
    DeploymentSpecFactory(deployment=spec.deployment, artifact=artifact, current=True)  # v1 can be rolled back to
    unused = ModelArtifactFactory(host=gpu.host, repo__source=source)
    downloading = ModelArtifactFactory(host=gpu.host, repo__source=source, status=ModelArtifact.Status.DOWNLOADING)
    job = JobFactory(target=downloading, status=Job.Status.RUNNING)
    JobLogLine.objects.bulk_create(JobLogLine(job=job, seq=seq, text=f"line {seq}") for seq in range(1, 4))
    image = AllowedImage.objects.create(reference="ghcr.io/huggingface/text-generation-inference:3.3.5")
    endpoint = AllowedEndpoint.objects.create(pattern="10.8.0.0/16")
    credential = CredentialFactory(created_by=admin)
    other = UserFactory(username="olivia-other", roles=["engineer"])
    team = TeamFactory(name="nlp")
    object_grant(actor=admin, grantee=team, action=roles.VIEW, target=spec.deployment)
    token, _ = token_create(actor=engineer, user=engineer, name="spare", scope=ApiToken.Scope.READ)
    dataset, upload = _dataset(admin, engineer, team)
    finetune, running, adapter = _finetune(dataset, artifact)
    quality = _quality(artifact)
    approval = _approval(artifact, requester=other)
    key, account = _gateway(admin, team, spec.deployment)
    schedule, alert = _schedule(spec.deployment, owner=admin)
    return {
        "adapters": adapter.pk,
        "approvals": approval.pk,
        "benchmarks": _benchmark(spec.deployment),
        "benchmarks/tuned": _tuned_benchmark(artifact),
        "benchmark-alerts": alert,
        "benchmark-schedules": schedule,
        "finetunes": finetune.pk,
        "finetunes/running": running.pk,
        **quality,
        "audit/events": AuditEvent.objects.latest("id").pk,
        "credentials": credential.pk,
        "datasets": dataset.pk,
        "datasets/uploads": upload,
        "deployments": spec.deployment.pk,
        "endpoints": endpoint.pk,
        "gpus": gpu.pk,
        "charts/hosts": gpu.host.pk,
        "charts/deployments": spec.deployment.pk,
        "health-checks": _health_check(gpu.host),
        "hosts": gpu.host.pk,
        "images": image.pk,
        "inference-keys": key.pk,
        "service-accounts": account.pk,
        "team-quotas": team.pk,
        "jobs": job.pk,
        "models": unused.pk,
        "models/downloading": downloading.pk,
        "models/variants": artifact.pk,  # a base model with a variant (its adapter): the variants page has rows
        "teams": team.pk,
        "tokens": token.pk,
        "users": other.pk,
    }


def _dataset(admin, engineer, team):
    """A dataset the engineer's team owns, with version 1, and an upload of version 2 that has received nothing."""
    import io

    from deployments.datasets import services as datasets

    team.user_set.add(engineer)
    dataset = datasets.dataset_create(actor=admin, name="fuzz-set", team=team)
    content = b'{"text": "fuzz row"}\n'
    first = datasets.upload_start(actor=admin, dataset=dataset, filename="v1.jsonl", size=len(content))
    first = datasets.upload_chunk(actor=admin, upload=first, offset=0, stream=io.BytesIO(content), length=len(content))
    datasets.upload_complete(actor=admin, upload=first)
    upload = datasets.upload_start(actor=admin, dataset=dataset, filename="v2.jsonl", size=64)
    return dataset, str(upload.pk)


def _finetune(dataset, base):
    """A cancelled fine-tune on the dataset (it can be resumed), a running one (it can be stopped) and the adapter
    of a run on `base`."""
    version = dataset.versions.get(version=1)
    params = {
        "base_artifact_id": base.pk,
        "dataset_version_id": version.pk,
        "options": {"method": "lora", "precision": "auto", "hyperparameters": {}},
        "gpu_indexes": [],
    }
    job = JobFactory(kind=Job.Kind.FINETUNE, status=Job.Status.CANCELLED, target=dataset, params=params)
    running = JobFactory(kind=Job.Kind.FINETUNE, status=Job.Status.RUNNING, target=dataset, params=params)
    adapter = ModelArtifactFactory(
        host=base.host, repo__source=base.repo.source, kind=ModelArtifact.Kind.ADAPTER, base=base, produced_by=job
    )
    return job, running, adapter


def _quality(artifact) -> dict[str, int]:
    """A running quantize job and a running evaluate job of the artifact (each can be stopped), and a figure."""
    from deployments.models import EvalResult

    quantize = JobFactory(
        kind=Job.Kind.QUANTIZE,
        status=Job.Status.RUNNING,
        target=artifact,
        params={"source_artifact_id": artifact.pk, "dataset_version_id": None, "options": {"scheme": "FP8_DYNAMIC"}},
    )
    params = {"artifact_ids": [artifact.pk], "dataset_version_ids": [], "options": {}}
    evaluate = JobFactory(kind=Job.Kind.EVALUATE, status=Job.Status.RUNNING, target=artifact, params=params)
    figure = EvalResult.objects.create(job=evaluate, artifact=artifact, metric="perplexity", value=12.5)
    return {"quantize-jobs": quantize.pk, "evaluate-jobs": evaluate.pk, "eval-results": figure.pk}


def _benchmark(deployment) -> int:
    """A running benchmark of the deployment (its job active: it can be cancelled), with one recorded step."""
    from deployments.models import BenchmarkRun, BenchmarkStep

    job = JobFactory(kind=Job.Kind.BENCHMARK, status=Job.Status.RUNNING, target=deployment, params={})
    run = BenchmarkRun.objects.create(
        deployment=deployment, spec=deployment.spec, state=BenchmarkRun.State.RUNNING, job=job, workload={}
    )
    BenchmarkStep.objects.create(run=run, index=0, concurrency=1, requests=4, ttft_ms_p50=20.0)
    return run.pk


def _tuned_benchmark(artifact) -> int:
    """A finished benchmark with a suggestion (its page shows Apply): a TGI deployment on the CPU (the planner
    checks nothing there) whose heaviest step ran past max_concurrent_requests and got 429s."""
    from deployments.models import BenchmarkRun, BenchmarkStep, Deployment

    spec = DeploymentSpecFactory(
        deployment__name="fuzz-tuned", deployment__state=Deployment.State.RUNNING, artifact=artifact, device="cpu",
        current=True, max_concurrent_requests=8,
    )  # fmt: skip
    Deployment.objects.filter(pk=spec.deployment_id).update(host=artifact.host)
    run = BenchmarkRun.objects.create(
        deployment=spec.deployment, spec=spec, state=BenchmarkRun.State.SUCCEEDED, workload={"levels": [16]}
    )
    BenchmarkStep.objects.create(
        run=run, index=0, concurrency=16, requests=20, requests_failed=4, errors={"http_429": 4}, has_errors=True
    )
    return run.pk


def _schedule(deployment, *, owner) -> tuple[int, int]:
    """An enabled benchmark schedule of the deployment and an open drop alert on the run it started (the deployment
    page's Benchmarks card shows its toggle, delete and acknowledge forms)."""
    from django.utils import timezone

    from deployments.models import BenchmarkAlert, BenchmarkRun, BenchmarkSchedule, BenchmarkStep

    schedule = BenchmarkSchedule.objects.create(
        deployment=deployment, created_by=owner, workload={"levels": [1]}, next_run_at=timezone.now()
    )
    run = BenchmarkRun.objects.create(
        deployment=deployment, spec=deployment.spec, state=BenchmarkRun.State.SUCCEEDED, workload={"levels": [1]},
        schedule=schedule, finished_at=timezone.now(),
    )  # fmt: skip
    BenchmarkStep.objects.create(run=run, index=0, concurrency=1, requests=4, output_tokens_per_s=50.0)
    alert = BenchmarkAlert.objects.create(
        deployment=deployment, schedule=schedule, run=run, figure="output_tokens_per_s", value=50.0, baseline=100.0,
        change_percent=-50.0,
    )  # fmt: skip
    return schedule.pk, alert.pk


def _gateway(admin, team, deployment):
    """An admin's inference key for the deployment, and an enabled service account of `team` with a key."""
    from deployments.gateway import keys

    key, _ = keys.key_create(actor=admin, name="fuzz", deployments=[deployment], limits={"rpm": 60})
    account = keys.service_account_create(actor=admin, name="fuzz-bot", team=team)
    keys.key_create(actor=admin, service_account=account, name="bot", all_deployments=True)
    keys.team_quota_set(actor=admin, team=team, limits={"tpd": 100000})
    return key, account


def _approval(artifact, *, requester):
    """A running production deployment whose stop `requester` asked for: pending, for the admin to decide."""
    from datetime import timedelta

    from django.utils import timezone

    from deployments.models import ApprovalRequest

    spec = DeploymentSpecFactory(
        deployment__name="fuzz-prod",
        deployment__state="running",
        deployment__environment="production",
        artifact=artifact,
        current=True,
    )
    return ApprovalRequest.objects.create(
        deployment=spec.deployment,
        deployment_name=spec.deployment.name,
        action="stop",
        requested_by=requester,
        expires_at=timezone.now() + timedelta(days=1),
    )


def _health_check(host) -> int:
    """A finished health check whose sweep stopped before a copy (it can be resumed), and a corrupt copy (it can be
    restored)."""
    stopped = JobFactory(kind=Job.Kind.INTEGRITY_SWEEP, status=Job.Status.CANCELLED, queue=host.queue)
    corrupt = ModelArtifactFactory(
        host=host, status=ModelArtifact.Status.CORRUPT, integrity_note="model.safetensors: sha256 0f1e… expected 9a8b…"
    )
    sweep = {str(corrupt.pk): {"host": host.name, "files": {}}}
    run = HealthCheckRun.objects.create(
        state=HealthCheckRun.State.DONE, progress={"jobs": [stopped.pk], "sweep": sweep}
    )
    return run.pk
