"""The VRAM planner as the console offers it: a model from the Hub (or the model store) sized against the
inventory, for TGI or vLLM. The arithmetic lives in deployments.sizing; this adds who may ask, tokens and limits.
vLLM's settings and the words for its share and KV cache are the deploy form's (deployments/serving/planning.py)."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext as _

import audit
from console import roles
from console.accounts.models import Credential
from console.errors import ApplicationError
from console.permissions import require
from deployments.backends import BACKENDS
from deployments.inventory.capacity import inventory_capacity
from deployments.models import DeploymentSpec
from deployments.registry.endpoints import allow_listed_hops, check_url, hub_endpoint
from deployments.registry.network import source_unreachable
from deployments.serving.planning import vllm_details, vllm_limits
from deployments.sizing import ModelMetadata, SizingError, size_model
from deployments.sizing.metadata import load_hub_metadata, load_local_metadata, looks_like_path


def _in_store(source: str) -> Path | None:
    """A local source, resolved against the model store and nothing else (never the web process's directory):
    the directory when `source` names one in the store (or looks like a path), None for a Hub repo id."""
    store = Path(os.path.realpath(settings.MODEL_STORE))
    path = Path(os.path.realpath(store / source))  # an absolute `source` replaces the store, then is checked
    if not (looks_like_path(source) or source in (".", "..") or path.is_dir()):
        return None
    if store != path and store not in path.parents:
        raise ApplicationError(
            _("Local models must be inside the model store (%(store)s).") % {"store": store}, field="source"
        )
    return path


def _metadata(source: str, *, revision: str | None, token: str | None) -> ModelMetadata:
    local = _in_store(source)
    if local is not None:
        if not local.is_dir():
            raise ApplicationError(
                _("No directory %(source)s in the model store.") % {"source": source}, field="source"
            )
        return load_local_metadata(local)
    return _hub_metadata(source, revision=revision, token=token)


def _hub_metadata(repo: str, *, revision: str | None, token: str | None) -> ModelMetadata:
    """A Hub repo's metadata, read only when the Hub (or the mirror HF_ENDPOINT names) is on the endpoint
    allow-list, every hop checked as for downloads: a refusal names `source` and nothing is contacted."""
    endpoint = hub_endpoint()
    try:
        check_url(endpoint)
        # Someone waits: an unreachable Hub is said within HUB_CONNECT_TIMEOUT, as one sentence.
        with allow_listed_hops(interactive=True):
            return load_hub_metadata(repo, revision=revision, token=token)
    except SizingError as error:
        unreachable = source_unreachable(error, url=endpoint)
        if unreachable is not None:
            raise unreachable from None
        raise
    except ApplicationError as refused:
        if refused.field != "endpoint":
            raise
        raise ApplicationError(
            _("%(repo)s is read from %(endpoint)s, which is not an allowed source: %(reason)s")
            % {"repo": repo, "endpoint": endpoint, "reason": refused.message.removeprefix("Request refused: ")},
            field="source",
        ) from None


def _token(user, credential_id) -> str | None:
    if not credential_id:
        return None
    credential = Credential.objects.filter(pk=credential_id, kind=Credential.Kind.HF_TOKEN).first()
    if credential is None:
        raise ApplicationError(_("No such Hugging Face token."), field="credential")
    require(user, roles.ADD_MODEL, credential)
    audit.record(action="secret.used", actor=user, target=credential, detail={"purpose": "read model metadata"})
    return credential.value.reveal()


def plan(
    *,
    user,
    source: str,
    revision: str | None = None,
    backend: str = DeploymentSpec.Backend.TGI,
    quantize: str | None = None,
    max_total_tokens: int | None = None,
    max_batch_total_tokens: int | None = None,
    kv_cache_dtype: str | None = None,
    credential_id: int | None = None,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
) -> dict:
    """Size a model for every precision against the inventory, as `backend` would run it: TGI's token limits, or
    vLLM's share and batch limits (the other backend's are ignored); field errors as ApplicationError."""
    require(user, roles.VIEW)
    source = source.strip()
    if not source:
        raise ApplicationError(
            _("Give a Hugging Face repo id (org/name) or a directory in the model store."), field="source"
        )
    backend = str(backend or DeploymentSpec.Backend.TGI)
    if backend not in BACKENDS:
        raise ApplicationError(_("No such serving backend: %(backend)s.") % {"backend": backend}, field="backend")
    vllm = vllm_limits(
        {
            "backend": backend,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens,
        }
    )
    tgi = {} if vllm else {"max_total_tokens": max_total_tokens, "max_batch_total_tokens": max_batch_total_tokens}
    try:
        metadata = _metadata(source, revision=revision or None, token=_token(user, credential_id))
        report = size_model(
            metadata,
            quantize=quantize or None,
            kv_cache_dtype=kv_cache_dtype or None,
            inventory=inventory_capacity(),
            vllm=vllm,
            **tgi,
        )
    except SizingError as error:
        raise ApplicationError(error.text(_), field=error.field or "source") from None
    result = report.as_dict()
    # vLLM's notes (GPUs busy, shard counts) in the reader's language, in place of their English text.
    translated = {note.message: note.text(_) for note in report.vllm_notes}
    result["warnings"] = [translated.get(warning, warning) for warning in result["warnings"]]
    result["backend"], result["backend_label"] = backend, BACKENDS[backend].label
    result["details"] = vllm_details(result["vllm"]) if result["vllm"] else []
    return result
