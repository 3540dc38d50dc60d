"""The `serve` job: launch a deployment's server on the placed host and watch it for as long as it runs.

It runs on the host's agent queue (never in the web process). It waits for the model files, finds a
server already running for the deployment (after a worker restart) or starts one, copies every output
line into the job's log (stream "server"), moves the deployment to running once /health and /info answer,
fails it with a diagnosed cause when the server exits or a state's deadline passes, and stops it
gracefully when the job is cancelled. Exactly one server per deployment: extra ones are removed. A replica of
a deployment (params `replica`) is watched by the same code through its own record (workers/handlers/replica.py).
"""

from __future__ import annotations

import collections
import secrets
import socket
import time

from django.conf import settings
from django.db import transaction
from django.utils import timezone

import audit
from deployments.backends import get_backend
from deployments.backends.base import Backend
from deployments.models import (
    AllowedImage,
    Deployment,
    DeploymentReplica,
    DeploymentSpec,
    Job,
    JobLogLine,
    ModelArtifact,
)
from workers.handlers.replica import DeploymentServer, ReplicaServer, save, server_for
from workers.runner import Handler, JobCancelled, JobContext, JobFailure, register
from workers.runtimes import Handle, RunSpec, RuntimeFailure, get_runtime

State = Deployment.State
IMAGE_NEXT_STEPS = {
    "image_missing": "Load the image on the host (docker load) and add it to the allowed images.",
    "image_digest_mismatch": "Load the allowed build of the image on the host, or correct its digest under "
    "Deployments → Images.",
}
POLL_SECONDS = 0.5
TAIL_LINES = 2000


def instance_name(deployment: Deployment | DeploymentReplica) -> str:
    if isinstance(deployment, DeploymentReplica):
        return deployment.instance  # each replica's server has a name (and a TGI socket prefix) of its own
    return f"llmdeploy-{deployment.pk}-{deployment.name}"[:63]


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def new_server_key(deployment: Deployment | DeploymentReplica) -> str:
    """A fresh API key for the server about to start (each start rotates it), stored encrypted before the
    server exists, so the console can always reach what it started."""
    key = secrets.token_urlsafe(32)
    deployment.server_key = key
    save(deployment, server_key=key)
    return key


def run_spec(
    deployment: Deployment | DeploymentReplica,
    spec: DeploymentSpec,
    artifact: ModelArtifact | None = None,
    *,
    server_key: str = "",
) -> RunSpec:
    """What the runtime starts: the backend's flags, the placed GPUs, the port on the bind address, the server's
    API key (as a file, see RunSpec.secret_env), and the copy of the model on the placed host (`artifact`; the
    spec's own copy when placed where it is)."""
    host = deployment.host
    artifact = artifact or spec.artifact
    docker = host.runtime == host.Runtime.DOCKER
    store = host.model_store or str(settings.MODEL_STORE)
    name = instance_name(deployment)
    port = 0 if docker else _free_port(settings.DEPLOY_BIND_ADDRESS)
    backend = get_backend(spec.backend)
    image = spec.image or backend.default_image  # run pinned to the digest the allow-list names, when it has one
    plan = backend.launch_plan(
        docker=docker,
        model_dir=artifact.path,
        model_store=store,
        num_shard=len(deployment.gpu_indexes),
        instance=name,
        bind_address=settings.DEPLOY_BIND_ADDRESS,
        port=port,
        master_port=None if docker else _free_port("127.0.0.1"),
        prometheus_port=None if docker else _free_port("127.0.0.1"),
    )
    secrets = {}
    if spec.credential_id:
        secrets[backend.token_file_env] = spec.credential.value.reveal()
    return RunSpec(
        name=name,
        labels=deployment.labels,
        args=backend.launcher_args(spec, plan),
        env=backend.launch_env(spec, gpu_indexes=deployment.gpu_indexes, native=not docker),
        model_dir=artifact.path,
        model_store=store,
        image=image,
        image_digest=AllowedImage.objects.filter(reference=image).values_list("digest", flat=True).first() or "",
        gpu_indexes=list(deployment.gpu_indexes) if spec.device == DeploymentSpec.Device.GPU else [],
        port=port,
        bind_address=settings.DEPLOY_BIND_ADDRESS,
        container_port=backend.container_port,
        secret_files=secrets,
        secret_env={backend.server_key_env: server_key} if server_key else {},
        stop_grace=settings.DEPLOY_STOP_GRACE_SECONDS,
        launcher=list(backend.launcher),
        launcher_stand_in=backend.launcher_stand_in,
        adapter_dirs=[a["path"] for a in spec.lora_adapters or [] if a.get("path")],
    )


class _Watch:
    """One attempt's view of the server: its handle, the output copied so far, the recent lines."""

    def __init__(
        self,
        ctx: JobContext,
        deployment: Deployment | DeploymentReplica,
        backend: Backend,
        servers: DeploymentServer | ReplicaServer | None = None,
    ) -> None:
        self.ctx, self.deployment, self.backend = ctx, deployment, backend
        self.servers = servers or DeploymentServer()
        self.runtime = get_runtime(deployment.host.runtime)
        self.handle: Handle | None = None
        self.cursor = deployment.log_cursor
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        recent = JobLogLine.objects.filter(job=ctx.job, stream="server").order_by("-seq")[:TAIL_LINES]
        self.tail.extend(line.text for line in reversed(recent))
        self.key = deployment.server_key.reveal() if deployment.server_key else ""
        self.device = deployment.spec.device if deployment.spec_id else ""  # next steps differ on CPU

    def copy_output(self) -> None:
        """New server lines into the job log; the cursor is saved with them, so a retry repeats nothing."""
        lines, cursor = self.runtime.logs(self.handle, self.cursor)
        if not lines and cursor == self.cursor:
            return
        for line in lines:
            self.ctx.log_writer.write(line, stream="server")
            self.tail.append(line)
        with transaction.atomic():
            # The server's row before the job's, in the order deployment_stop locks them: the other order deadlocked
            # with a stop request arriving while the server printed (PostgreSQL then aborted the stop or this job).
            save(self.deployment, log_cursor=cursor)
            self.ctx.log_writer.flush()
        self.cursor = cursor

    def fail(self, *, exit_code: int | None = None, oom_killed: bool = False, deadline: str = "") -> JobFailure:
        found = self.backend.diagnose(
            list(self.tail),
            exit_code=exit_code,
            context={
                "oom_killed": oom_killed,
                "device": self.device,
                **({"deadline": deadline} if deadline else {}),
            },
        )
        detail = str(found.title)
        if found.evidence:
            # The failure shows on the deployment's page to everyone who may view it: no request content there
            # (the job's log keeps the lines whole for readers with view_data).
            evidence, _open = self.backend.mask_request_content(list(found.evidence[-5:]))
            detail += "\n" + "\n".join(evidence)
        return JobFailure(detail, cause=found.cause, next_step=str(found.next_step))


def _set_state(ctx: JobContext, watch: _Watch, state: str) -> None:
    """A state the job moves its server to by itself (a retried job whose server died with its worker starts it
    again): changed and audited in one transaction, as every other state change of a server is."""
    record, was = watch.deployment, watch.deployment.state
    replica = isinstance(record, DeploymentReplica)
    with transaction.atomic():
        if replica:  # the deployment's row first, as every change of a replica's row (replicas._lock_deployment)
            Deployment.objects.select_for_update().filter(pk=record.deployment_id).values_list("pk", flat=True).first()
        watch.servers.set_state(record, state)
        audit.record(
            action=f"deployment.replica_{state}" if replica else f"deployment.{state}",
            actor=None,
            actor_name=f"worker:{socket.gethostname()}",
            target=record.deployment if replica else record,
            detail={"from": was, "job": ctx.job.pk, **({"replica": record.index} if replica else {})},
        )


@register("serve")
class ServeHandler(Handler):
    def run(self, ctx: JobContext) -> dict:
        servers = server_for(ctx.job.params)
        deployment = servers.load(ctx.job.params)
        if deployment is None:
            raise JobFailure("The deployment (or this replica of it) is gone.", cause="not_found")
        spec = DeploymentSpec.objects.select_related("artifact", "credential").get(pk=ctx.job.params["spec"])
        # The copy on the placed host (placement may have chosen a host the registry is fetching the files to).
        artifact = ModelArtifact.objects.get(pk=ctx.job.params.get("artifact") or spec.artifact_id)
        watch = _Watch(ctx, deployment, get_backend(spec.backend), servers)
        self._wait_for_files(ctx, watch, artifact)
        self._find_or_start(ctx, watch, spec, artifact)
        return self._follow(ctx, watch)

    # -- phases --------------------------------------------------------------------------------------------
    def _wait_for_files(self, ctx: JobContext, watch: _Watch, artifact: ModelArtifact) -> None:
        deployment = watch.deployment
        while True:
            artifact.refresh_from_db(fields=["status", "path"])
            if artifact.status == ModelArtifact.Status.READY:
                return
            if artifact.status not in (ModelArtifact.Status.PENDING, ModelArtifact.Status.DOWNLOADING):
                raise JobFailure(
                    f"The model files are {artifact.get_status_display()}.",
                    cause="not_found",
                    next_step="Add the model again (or import it), then launch.",
                )
            if deployment.state != State.DOWNLOADING:
                _set_state(ctx, watch, State.DOWNLOADING)
                ctx.log(f"waiting for {artifact} to finish downloading")
            self._check_deadline(ctx, deployment, None)
            if ctx.should_cancel():
                raise JobCancelled
            time.sleep(1)

    def _find_or_start(self, ctx: JobContext, watch: _Watch, spec: DeploymentSpec, artifact: ModelArtifact) -> None:
        deployment = watch.deployment
        found = watch.runtime.find(watch.servers.labels(ctx.job.params))
        live = [handle for handle in found if watch.runtime.status(handle).alive]
        for extra in [h for h in found if h not in live[:1]]:
            ctx.log(f"removing a stale server {extra.name} ({extra.ref})")
            watch.runtime.remove(extra)
        if live:
            watch.handle = live[0]
            ctx.log(f"adopted the running server {watch.handle.name} ({watch.handle.ref}) at {watch.handle.endpoint}")
            return
        if deployment.state != State.STARTING:
            _set_state(ctx, watch, State.STARTING)
        watch.key = new_server_key(deployment)
        run = run_spec(deployment, spec, artifact, server_key=watch.key)
        ctx.log("starting the server with: " + " ".join(run.args))
        try:
            watch.handle = watch.runtime.start(run)
        except RuntimeFailure as failure:
            raise JobFailure(
                str(failure),
                cause=failure.cause,
                next_step=IMAGE_NEXT_STEPS.get(failure.cause, "See the job's log."),
            ) from failure
        watch.cursor = 0
        save(
            deployment,
            log_cursor=0,
            runtime_ref=watch.handle.ref,
            port=watch.handle.port,
            endpoint=watch.handle.endpoint,
            command=watch.handle.command or [*watch.backend.launcher, *run.args],
            server="",
        )
        ctx.log(
            f"started {watch.handle.name} ({watch.handle.ref}): {' '.join(watch.handle.command) or run.args[0]}; "
            f"waiting for {watch.handle.endpoint}/health"
        )

    def _check_deadline(
        self, ctx: JobContext, deployment: Deployment | DeploymentReplica, watch: _Watch | None
    ) -> None:
        deployment.refresh_from_db(fields=["deadline", "state"])
        if deployment.deadline and timezone.now() > deployment.deadline and deployment.state in State.launching():
            line = f"Deadline passed while {deployment.get_state_display()}"
            ctx.log(line)
            if watch is not None:
                watch.tail.append(line)
                watch.runtime.stop(watch.handle, grace=10)
                watch.runtime.remove(watch.handle)
                raise watch.fail(deadline=deployment.state)
            raise JobFailure(line, cause="health_deadline", next_step="Check the host, then launch again.")

    def _follow(self, ctx: JobContext, watch: _Watch) -> dict:
        deployment = watch.deployment
        deployment.refresh_from_db()
        last_health = 0.0
        while True:
            watch.copy_output()
            status = watch.runtime.status(watch.handle)
            if not status.alive:
                time.sleep(0.2)
                watch.copy_output()
                ctx.log(f"the server exited (status {status.exit_code}{', OOM-killed' if status.oom_killed else ''})")
                watch.runtime.remove(watch.handle)
                raise watch.fail(exit_code=status.exit_code, oom_killed=status.oom_killed)
            if ctx.should_cancel():
                raise JobCancelled
            now = time.monotonic()
            if deployment.state != State.RUNNING:
                self._check_deadline(ctx, deployment, watch)
                if watch.backend.health(watch.handle.endpoint, timeout=2, key=watch.key):
                    info = watch.backend.info(watch.handle.endpoint, key=watch.key)
                    if info is not None:
                        server = watch.backend.server_name(info)
                        watch.servers.running(deployment, endpoint=watch.handle.endpoint, info=info, server=server)
                        ctx.log(
                            f"running: {server} at {watch.handle.endpoint} answers /health and /info "
                            f"(max_total_tokens {info.get('max_total_tokens')})"
                        )
                        save(deployment, restart_count=0)
                        last_health = now
            elif now - last_health >= settings.DEPLOY_HEALTH_SECONDS:
                last_health = now
                if not watch.backend.health(watch.handle.endpoint, timeout=5, key=watch.key):
                    ctx.log("health check failed (the server may be busy or recovering)")
            time.sleep(POLL_SECONDS)

    # -- outcome -------------------------------------------------------------------------------------------------
    def finished(self, ctx: JobContext, status: str) -> None:
        servers = server_for(ctx.job.params)
        deployment = servers.load(ctx.job.params)
        if deployment is None:
            return
        spec = DeploymentSpec.objects.filter(pk=ctx.job.params.get("spec")).first() or deployment.spec
        watch = _Watch(ctx, deployment, get_backend(spec.backend), servers)
        runtime = watch.runtime
        handles = runtime.find(servers.labels(ctx.job.params))
        if status == Job.Status.CANCELLED:
            for handle in handles:
                ctx.log(f"stopping {handle.name} (grace {settings.DEPLOY_STOP_GRACE_SECONDS} s)")
                result = runtime.stop(handle, grace=settings.DEPLOY_STOP_GRACE_SECONDS)
                watch.handle = handle
                watch.copy_output()  # the server's shutdown lines
                ctx.log(f"stopped ({result.state}, status {result.exit_code})")
                runtime.remove(handle)
            if servers.stopped(deployment):
                ctx.log("launching again (restart requested)")
        elif status == Job.Status.FAILED:
            for handle in handles:
                runtime.stop(handle, grace=10)
                runtime.remove(handle)
            servers.failed(
                deployment,
                cause=ctx.failure_cause or "error",
                detail=ctx.failure_detail,
                next_step=ctx.failure_next_step,
            )
