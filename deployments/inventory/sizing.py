"""The VRAM planner as the console offers it: a model from the Hub (or the model store) sized against the
inventory. The arithmetic lives in deployments.sizing; this adds who may ask, tokens and limits."""

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
from deployments.inventory.capacity import inventory_capacity
from deployments.registry.endpoints import allow_listed_hops, check_url, hub_endpoint
from deployments.registry.network import source_unreachable
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
    quantize: str | None = None,
    max_total_tokens: int | None = None,
    max_batch_total_tokens: int | None = None,
    kv_cache_dtype: str | None = None,
    credential_id: int | None = None,
) -> dict:
    """Size a model for every precision against the inventory; field errors as ApplicationError."""
    require(user, roles.VIEW)
    source = source.strip()
    if not source:
        raise ApplicationError(
            _("Give a Hugging Face repo id (org/name) or a directory in the model store."), field="source"
        )
    try:
        metadata = _metadata(source, revision=revision or None, token=_token(user, credential_id))
        report = size_model(
            metadata,
            quantize=quantize or None,
            max_total_tokens=max_total_tokens,
            max_batch_total_tokens=max_batch_total_tokens,
            kv_cache_dtype=kv_cache_dtype or None,
            inventory=inventory_capacity(),
        )
    except SizingError as error:
        raise ApplicationError(error.text(_), field=error.field or "source") from None
    return report.as_dict()
