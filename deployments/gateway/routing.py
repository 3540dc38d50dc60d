"""Where a call goes: a deployment's name resolved to what the gateway needs to forward to it (its servers, the
adapters it serves, what the inference log keeps of it), and the choice of server among its replicas.

Read from the database in a worker thread and cached by the gateway (deployments/gateway/cache.py says when to
forget); nothing here runs on the event loop except Balancer, which is pure bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deployments.backends import get_backend
from deployments.serving.models import Deployment
from deployments.serving.replicas import running_replicas


@dataclass(frozen=True)
class Upstream:
    """One running server of a deployment."""

    url: str
    key: str  # the server's own key (per deployment, per start); only the gateway sends it
    label: str  # which replica, for the inference log and errors ("h1:GPU 0")


@dataclass(frozen=True)
class Route:
    deployment_id: int
    name: str
    team_id: int | None
    state: str
    running: bool
    production: bool
    keep_text: bool  # prompt retention: prompts and completions go to the inference log
    adapters: tuple[str, ...]
    backend: str
    tokenizer_dir: str | None  # the model directory when this machine can read it (prompt tokens are counted)
    upstreams: tuple[Upstream, ...] = field(default=())
    # Whether the servers answer TGI's /generate routes themselves (else the gateway translates them).
    native_generate: bool = True
    # The `model` to send upstream: ("", base name) and (adapter, its name), as the backend says (one lookup here,
    # none per call).
    upstream_models: tuple[tuple[str, str], ...] = field(default=())
    # What /llm/<name>/info says of a server whose backend has no /info: the model, its commit, the server.
    model_id: str = ""
    model_sha: str | None = None
    server: str = ""
    max_model_len: int | None = None

    def upstream_model(self, adapter: str = "") -> str:
        """The `model` the server serves the base model (adapter "") or an adapter under."""
        for name, model in self.upstream_models:
            if name == adapter:
                return model
        return adapter or self.name


def upstreams(deployment: Deployment) -> list[Upstream]:
    """The servers of a deployment that answer calls: server 0 (the deployment's own) and every replica whose
    state is running. A replica that died is left out at once (its state moves off running, and the console tells
    the gateways to re-read routes); the others keep serving, even while server 0 itself restarts."""
    servers = [deployment] if deployment.state == Deployment.State.RUNNING and deployment.endpoint else []
    servers += running_replicas(deployment)
    return [_upstream(server, index=getattr(server, "index", 0)) for server in servers]


def _upstream(server, *, index: int) -> Upstream:
    """One server (a Deployment for replica 0, a DeploymentReplica for the others) as the gateway calls it;
    labelled "host:GPU 0" ("host:CPU"), with "#<n>" for replica n so that two servers never share a label."""
    key = server.server_key.reveal() if server.server_key else ""
    where = server.host.name if server.host_id else ""
    if where:
        gpus = ",".join(map(str, server.gpu_indexes or []))
        where = f"{where}:GPU {gpus}" if gpus else f"{where}:CPU"
    label = (where or server.name) + (f"#{index}" if index else "")
    return Upstream(url=server.endpoint.rstrip("/"), key=key, label=label)


def _tokenizer_dir(deployment: Deployment) -> str | None:
    artifact = deployment.spec.artifact if deployment.spec_id else None
    path = artifact.path if artifact is not None else ""
    return path if path and (Path(path) / "tokenizer.json").is_file() else None


def route_for(name: str) -> Route | None:
    """The route of the deployment called `name`, or None when there is none (sync: call it in a thread)."""
    deployment = (
        Deployment.objects.select_related("spec", "spec__artifact__repo", "host").filter(name=name).first()
        if name
        else None
    )
    if deployment is None:
        return None
    spec = deployment.spec
    servers = tuple(upstreams(deployment))
    adapters = tuple(a["name"] for a in (spec.lora_adapters if spec else []) if a.get("name"))
    backend = get_backend(spec.backend if spec else "")
    served = backend.served_model_name(spec, deployment_name=deployment.name) if spec else deployment.name
    repo = spec.artifact.repo if spec and spec.artifact_id else None
    return Route(
        deployment_id=deployment.pk,
        name=deployment.name,
        team_id=deployment.team_id,
        state=deployment.state,
        running=bool(servers),  # server 0 may be down while a replica serves
        production=deployment.environment == Deployment.Environment.PRODUCTION,
        keep_text=deployment.prompt_retention == Deployment.PromptRetention.FULL,
        adapters=adapters,
        backend=spec.backend if spec else "",
        tokenizer_dir=_tokenizer_dir(deployment),
        upstreams=servers,
        native_generate=backend.native_generate_routes,
        upstream_models=tuple((a, backend.upstream_model(served, a or None)) for a in ("", *adapters)),
        model_id=repo.repo_id if repo else "",
        model_sha=(repo.commit or None) if repo else None,
        server=deployment.server,
        max_model_len=spec.max_model_len if spec else None,
    )


def split_model(model: str) -> tuple[str, str]:
    """An OpenAI `model`: `deployment` or `deployment:adapter`."""
    name, _, adapter = (model or "").partition(":")
    return name.strip(), adapter.strip()


class Balancer:
    """Least outstanding requests across a deployment's servers, per gateway process. Ties go to the server
    used least recently, so an idle pool is used round robin."""

    def __init__(self) -> None:
        self._outstanding: dict[str, int] = {}
        self._turn: dict[str, int] = {}
        self._clock = 0

    def order(self, servers: tuple[Upstream, ...], exclude: frozenset[str] = frozenset()) -> list[Upstream]:
        """Servers to try, best first."""
        candidates = [s for s in servers if s.url not in exclude]
        return sorted(candidates, key=lambda s: (self._outstanding.get(s.url, 0), self._turn.get(s.url, 0)))

    def acquire(self, server: Upstream) -> None:
        self._clock += 1
        self._turn[server.url] = self._clock
        self._outstanding[server.url] = self._outstanding.get(server.url, 0) + 1

    def release(self, server: Upstream) -> None:
        left = self._outstanding.get(server.url, 1) - 1
        if left <= 0:
            self._outstanding.pop(server.url, None)
        else:
            self._outstanding[server.url] = left
