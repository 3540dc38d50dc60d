"""Where a spec runs: the planner's verdict on a cleaned spec, placed by the one placement engine.

A spec may run on any host the inventory offers, not only the one holding the model: a copy from the Hub or a
mirror is fetched to the chosen host first (`Verdict.copy_to_host`); a local import or a console-made model is copied
there from a host holding it, through the console. Hosts that hold a ready copy are preferred. A spec of N replicas
fits when N servers fit, each on GPUs of its own (`verdict` places them one after the other; `server_verdict`
places one server, e.g. a replica restarting beside the others).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from django.db.models import Q
from django.utils.translation import gettext as _

from console.errors import ApplicationError
from deployments.backends import get_backend
from deployments.inventory.capacity import inventory_capacity
from deployments.models import DeploymentSpec, Host, ModelArtifact, ModelSource
from deployments.serving.images import image_refused
from deployments.sizing import HostCapacity, SizingError, SizingReport, load_model_metadata, size_model
from deployments.sizing.vllm import VllmLimits
from deployments.units import GB

CANDIDATE_STATES = (Host.Status.ONLINE, Host.Status.MANUAL)
TGI_LIMITS = ("max_input_tokens", "max_total_tokens", "max_batch_prefill_tokens")


@dataclass
class Verdict:
    """The planner's answer: does the spec fit, where (host, GPUs, shards), at what memory, and why not.
    `fits` is None while the files are not here to size; False refuses a launch."""

    fits: bool | None
    device: str
    host: str
    gpu_indexes: list[int]
    num_shard: int
    per_gpu_bytes: int = 0
    total_bytes: int = 0
    weight_bytes: int = 0
    kv_bytes: int = 0
    max_total_tokens: int | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    copy_to_host: bool = False  # the chosen host lacks the files: the registry fetches repo@commit there first
    replicas: list[dict] = field(default_factory=list)  # with several replicas: each one's host and GPUs
    # vLLM: its share of each GPU and the KV cache left (deployments/sizing/vllm.py), and the same in words.
    vllm: dict | None = None
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready (API responses, the deploy page's script)."""
        return asdict(self)


def movable(artifact: ModelArtifact) -> bool:
    """Whether another host can get these files: fetched from the Hub or a mirror by repo@commit, or copied from a
    host holding a ready copy through the console (imports and console-made models; deployments/registry/copies.py).
    An adapter needs its base model on that host too, so it stays where it is."""
    if not artifact.imported and artifact.repo.source.kind in (ModelSource.Kind.HUB, ModelSource.Kind.MIRROR):
        return True
    ready = ModelArtifact.objects.filter(repo=artifact.repo, status=ModelArtifact.Status.READY)
    return artifact.base_id is None and ready.exclude(files_sha256={}).exists()


def holding_hosts(artifact: ModelArtifact) -> list[str]:
    """Hosts with a ready copy of the artifact's repo@commit (the artifact's own host first)."""
    names = ModelArtifact.objects.filter(repo=artifact.repo, status=ModelArtifact.Status.READY).values_list(
        "host__name", flat=True
    )
    return sorted(set(names), key=lambda name: (name != artifact.host.name, name))


def candidate_hosts(values: dict, holder: str | None) -> tuple[list[HostCapacity], list[str]]:
    """The hosts a spec may be placed on, and why the others may not."""
    artifact: ModelArtifact = values["artifact"]
    holding = set(holding_hosts(artifact))
    hosts = Host.objects.filter(Q(status__in=CANDIDATE_STATES) | Q(pk=artifact.host_id)).order_by("name")
    allowed, excluded = [], []
    can_move = movable(artifact)
    for host in hosts:
        if host.name not in holding and not can_move:
            excluded.append(
                _(
                    "%(host)s does not hold this model and cannot get it yet (no ready, verified copy to copy from, "
                    "or an adapter whose base model is elsewhere): it runs only on %(holding)s"
                )
                % {"host": host.name, "holding": ", ".join(sorted(holding)) or _("no host")}
            )
        elif image_refused(image=values["image"], default=get_backend(values["backend"]).default_image, host=host):
            excluded.append(f"{host.name} runs containers and the image is not on the allowed list")
        else:
            allowed.append(host.pk)
    return inventory_capacity(hosts.filter(pk__in=allowed), except_holder=holder), excluded


def vllm_limits(values: dict) -> VllmLimits | None:
    """A spec's vLLM settings when its backend reserves a share of each GPU at start (vLLM), else None."""
    semantics = get_backend(values["backend"]).memory
    if not semantics.reserves:
        return None
    return VllmLimits(
        gpu_memory_utilization=values.get("gpu_memory_utilization") or semantics.default_utilization,
        max_model_len=values.get("max_model_len"),
        max_num_seqs=values.get("max_num_seqs"),
        max_num_batched_tokens=values.get("max_num_batched_tokens"),
    )


def _size(values: dict, **where) -> SizingReport:
    artifact: ModelArtifact = values["artifact"]
    try:
        metadata = load_model_metadata(artifact.path)
        vllm = vllm_limits(values)
        tgi = {} if vllm else {name: values.get(name) for name in TGI_LIMITS}
        return size_model(
            metadata,
            quantize=values["quantize"] or None,
            kv_cache_dtype=values["kv_cache_dtype"] or None,
            keep_free_fraction=get_backend(values["backend"]).memory.keep_free_fraction,
            vllm=vllm,
            **tgi,
            **where,
        )
    except SizingError as error:
        raise ApplicationError(error.text(_), field=error.field or "artifact") from None


def verdict(values: dict, *, holder: str | None = None) -> Verdict:
    """The planner on a cleaned spec: does it fit, on which host and GPUs, and why not. With replicas, every
    server must fit on GPUs no other server of the spec uses; the answer is the first server's placement with
    each replica's host and GPUs listed, or the reason the one that does not fit gives."""
    first = server_verdict(values, holder=holder)
    count = values.get("replicas") or 1
    if count == 1 or first.fits is not True or first.device == DeploymentSpec.Device.CPU:
        return first  # CPU replicas all run beside the model; an unsized model is sized once its files are here
    if values["gpu_indexes"]:
        reason = _(
            "GPUs chosen by hand serve one replica: leave them empty so each of the %(count)s replicas is "
            "placed on GPUs of its own."
        ) % {"count": count}
        return replace(first, fits=False, reason=reason)
    placed = [{"host": first.host, "gpu_indexes": first.gpu_indexes}]
    for number in range(2, count + 1):
        plan = server_verdict(values, holder=holder, avoid=taken_gpus(placed))
        if plan.fits is not True:
            reason = _("Replica %(number)s of %(count)s does not fit beside the others: %(reason)s") % {
                "number": number,
                "count": count,
                "reason": plan.reason or _("no GPU left"),
            }
            return replace(first, fits=False, reason=reason, replicas=placed)
        placed.append({"host": plan.host, "gpu_indexes": plan.gpu_indexes})
    return replace(first, replicas=placed)


def taken_gpus(servers: list[dict]) -> frozenset[tuple[str, int]]:
    """(host, GPU index) pairs the given servers ({"host", "gpu_indexes"}) use."""
    return frozenset((server["host"], index) for server in servers for index in server["gpu_indexes"] or [])


def server_verdict(
    values: dict, *, holder: str | None = None, avoid: frozenset[tuple[str, int]] = frozenset()
) -> Verdict:
    """One server of the spec: where it fits, leaving out the GPUs in `avoid` (those of its sibling replicas)."""
    artifact: ModelArtifact = values["artifact"]
    home = artifact.host.name
    if values["device"] == DeploymentSpec.Device.CPU:
        warning = _("Runs on the host's CPU: no GPU memory is checked (development and small models only).")
        return Verdict(fits=True, device="cpu", host=home, gpu_indexes=[], num_shard=1, warnings=[warning])
    if artifact.status != ModelArtifact.Status.READY:
        return Verdict(
            fits=None,
            device="gpu",
            host=home,
            gpu_indexes=values["gpu_indexes"],
            num_shard=values.get("num_shard") or len(values["gpu_indexes"]) or 1,
            warnings=[_("The model is still downloading: it is sized when its files are here.")],
        )
    if values["gpu_indexes"]:  # GPUs chosen by hand: on the host that holds this copy
        [home_capacity] = inventory_capacity(Host.objects.filter(pk=artifact.host_id), except_holder=holder)
        gpus = [g for g in home_capacity.gpus if g.index in values["gpu_indexes"]]
        report, hosts, excluded = _size(values, gpus=gpus), [], []
    else:
        hosts, excluded = candidate_hosts(values, holder)
        free = [replace(h, gpus=[g for g in h.gpus if (h.name, g.index) not in avoid]) for h in hosts]
        report = _size(
            values, num_shard=values.get("num_shard"), inventory=free, preferred_hosts=holding_hosts(artifact)
        )
        if avoid:
            excluded = [*excluded, _("the GPUs of the other replicas are left out")]
    plan = report.as_dict()
    gpu_set = plan.get("gpu_set") or {}
    fits = bool(plan["fits"])
    host = gpu_set.get("host") if fits and not values["gpu_indexes"] else home
    warnings = [note.text(_) for note in report.vllm_notes] if report.vllm_notes else plan["warnings"]
    reason = "" if fits else _refusal(artifact, {**plan, "warnings": warnings}, hosts, excluded)
    return Verdict(
        fits=fits,
        device="gpu",
        host=host,
        gpu_indexes=list(gpu_set.get("gpu_indexes") or values["gpu_indexes"]),
        num_shard=gpu_set.get("num_shard") or plan["num_shard"],
        per_gpu_bytes=plan["per_gpu_bytes"],
        total_bytes=plan["total_bytes"],
        weight_bytes=plan["weight_bytes"],
        kv_bytes=plan["kv_bytes"],
        max_total_tokens=plan["vllm"]["max_model_len"] if plan["vllm"] else plan["max_total_tokens"],
        reason=reason,
        warnings=warnings,
        copy_to_host=fits and host not in holding_hosts(artifact),
        vllm=plan["vllm"],
        details=vllm_details(plan["vllm"]) if plan["vllm"] else [],
    )


def vllm_details(memory: dict) -> list[str]:
    """vLLM's share of each GPU and what fills it, in words (the planner panel and the review show them)."""
    return [
        _(
            "vLLM may use %(share)s GB of each GPU (gpu_memory_utilization %(utilization)s of %(gpu)s GB); "
            "placement reserves that share and %(outside)s GB for its CUDA context on each GPU it is placed on."
        )
        % {
            "share": _gb(memory["share_bytes"]),
            "utilization": f"{memory['gpu_memory_utilization']:g}",
            "gpu": _gb(memory["gpu_total_bytes"]),
            "outside": _gb(memory["outside_bytes"]),
        },
        _(
            "Per GPU: weights %(weights)s GB, activations about %(activations)s GB (a profile run of %(tokens)s "
            "tokens and %(seqs)s sequences), runtime memory and CUDA graphs about %(runtime)s GB; the KV cache gets "
            "the other %(kv)s GB."
        )
        % {
            "weights": _gb(memory["weight_bytes"]),
            "activations": _gb(memory["activation_bytes"]),
            "tokens": memory["max_num_batched_tokens"],
            "seqs": memory["max_num_seqs"],
            "runtime": _gb(memory["non_torch_bytes"] + memory["graph_bytes"]),
            "kv": _gb(max(0, memory["kv_cache_bytes"])),
        },
        _(
            "KV cache: %(tokens)s tokens, in %(blocks)s blocks of %(block)s tokens "
            "(%(per_token)s bytes a token per GPU)."
        )
        % {
            "tokens": f"{memory['kv_tokens']:,}",
            "blocks": f"{memory['num_blocks']:,}",
            "block": memory["block_size"],
            "per_token": f"{memory['kv_bytes_per_token']:,}",
        },
        _(
            "At max_model_len %(length)s the KV cache holds %(by_kv)s full sequences at once; max_num_seqs "
            "%(seqs)s caps a batch, so up to %(running)s run at once (vLLM reports %(concurrency)sx)."
        )
        % {
            "length": f"{memory['max_model_len']:,}",
            "by_kv": f"{memory['sequences_by_kv']:,}",
            "seqs": f"{memory['max_num_seqs']:,}",
            "running": f"{memory['max_sequences']:,}",
            "concurrency": f"{memory['max_concurrency']:.2f}",
        },
    ]


def _gb(value: int) -> str:
    return f"{value / GB:.1f}"


def _refusal(artifact: ModelArtifact, plan: dict, hosts: list[HostCapacity], excluded: list[str]) -> str:
    if hosts and not any(h.gpus for h in hosts):
        if len(hosts) == 1:
            return _("%(host)s has no GPU. Choose device CPU for a small model, or a host with GPUs.") % {
                "host": artifact.host
            }
        return _("No host has a GPU. Choose device CPU for a small model, or a host with GPUs.")
    reason = "; ".join(plan["warnings"]) or (
        _("Needs %(gb).1f GB per GPU on %(shards)s GPU(s); no host can hold it.")
        % {"gb": plan["per_gpu_bytes"] / 1e9, "shards": plan["num_shard"]}
    )
    return "; ".join([reason, *excluded])
