"""Read what the planner needs about a model without downloading weights: config.json and safetensors headers.

A source is a local directory in the layout `save_pretrained` writes, or a Hub repo id. From the Hub we fetch
config.json and the safetensors headers (huggingface_hub reads them with ranged requests), never the weights.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployments.sizing.errors import SizingError, gettext_noop

CONFIG_FILE = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# A safetensors header is JSON; real ones are kilobytes to a few megabytes. Refuse absurd lengths from bad files.
MAX_HEADER_BYTES = 100_000_000
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class ModelMetadata:
    """What is known about one checkpoint.

    `safetensors_params` counts stored elements per safetensors dtype (for quantized checkpoints the packed int32
    tensors count 8 weights as one element, so the planner takes the logical count from the architecture then).
    `total_params` is the sum of those counts, or None without safetensors headers.
    """

    config: dict[str, Any]
    safetensors_params: dict[str, int] | None = None
    total_params: int | None = None
    files: list[str] = field(default_factory=list)
    revision_sha: str | None = None
    source: str = ""
    local: bool = False
    notes: list[str] = field(default_factory=list)


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file: 8-byte little-endian length, then that many bytes of JSON."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) != 8:
                raise SizingError(f"{path.name} is too short to be a safetensors file", "source")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                raise SizingError(f"{path.name} has a {length}-byte header; not a safetensors file", "source")
            raw = handle.read(length)
    except OSError as exc:
        raise SizingError(f"cannot read {path}: {exc.strerror or exc}", "source") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SizingError(f"{path.name} has no valid safetensors header", "source") from exc
    if not isinstance(header, dict):
        raise SizingError(f"{path.name} has no valid safetensors header", "source")
    return header


def count_header_params(header: dict[str, Any]) -> dict[str, int]:
    """Elements per dtype in one header (the `__metadata__` entry is not a tensor)."""
    counts: dict[str, int] = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        elements = 1
        for dim in info.get("shape") or []:
            elements *= int(dim)
        dtype = str(info.get("dtype", "")).upper()
        counts[dtype] = counts.get(dtype, 0) + elements
    return counts


def _merge(into: dict[str, int], counts: dict[str, int]) -> None:
    for dtype, count in counts.items():
        into[dtype] = into.get(dtype, 0) + count


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SizingError(
            gettext_noop("cannot read %(what)s (%(path)s): %(reason)s"),
            "source",
            what=what,
            path=str(path),
            reason=str(exc.strerror or exc),
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SizingError(
            gettext_noop("%(what)s in %(directory)s is not valid JSON: %(error)s"),
            "source",
            what=what,
            directory=str(path.parent),
            error=str(exc),
        ) from exc
    if not isinstance(data, dict):
        raise SizingError(
            gettext_noop("%(what)s in %(directory)s is not a JSON object"),
            "source",
            what=what,
            directory=str(path.parent),
        )
    return data


def load_local_metadata(directory: Path) -> ModelMetadata:
    """Read config.json and every safetensors header from a local model directory."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise SizingError(gettext_noop("no config.json in %(directory)s"), "source", directory=str(directory))
    config = _read_json(config_path, CONFIG_FILE)
    files = sorted(p.name for p in directory.iterdir() if p.is_file())
    notes: list[str] = []
    index_path = directory / SAFETENSORS_INDEX
    if index_path.is_file():
        weight_map = _read_json(index_path, SAFETENSORS_INDEX).get("weight_map") or {}
        shard_names = sorted(set(weight_map.values()))
    else:
        shard_names = sorted(name for name in files if name.endswith(".safetensors"))
    missing = [name for name in shard_names if not (directory / name).is_file()]
    params: dict[str, int] | None = None
    if shard_names and not missing:
        params = {}
        for name in shard_names:
            _merge(params, count_header_params(read_safetensors_header(directory / name)))
    elif missing:
        # Counting some shards only would understate the model; fall back to the architecture count.
        notes.append(f"{len(missing)} safetensors shard(s) listed in the index are missing; counted from config.json")
    else:
        notes.append("no safetensors files; parameters counted from config.json")
    return ModelMetadata(
        config=config,
        safetensors_params=params,
        total_params=sum(params.values()) if params else None,
        files=files,
        revision_sha=None,
        source=str(directory),
        local=True,
        notes=notes,
    )


def _hub_error(exc: Exception, repo: str, revision: str | None, token: str | None) -> SizingError:
    """Turn huggingface_hub exceptions into messages a person can act on (subclasses are tested first)."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        if token:
            return SizingError(
                gettext_noop(
                    "%(repo)s is a gated repository: accept its terms on the Hub and the token has no access to it"
                ),
                "token",
                repo=repo,
            )
        return SizingError(
            gettext_noop(
                "%(repo)s is a gated repository: accept its terms on the Hub and give a Hub token with access to it"
            ),
            "token",
            repo=repo,
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        if token:
            return SizingError(gettext_noop("repository %(repo)s was not found on the Hub"), "source", repo=repo)
        return SizingError(
            gettext_noop("repository %(repo)s was not found on the Hub (if it is private, give a Hub token)"),
            "source",
            repo=repo,
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return SizingError(
            gettext_noop("revision %(revision)r was not found in %(repo)s"), "revision", revision=revision, repo=repo
        )
    if isinstance(exc, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):
        return SizingError(
            gettext_noop("cannot reach the Hub for %(repo)s, and config.json is not in the local cache"),
            "source",
            repo=repo,
        )
    if isinstance(exc, errors.EntryNotFoundError):
        return SizingError(
            gettext_noop("%(repo)s has no config.json at revision %(revision)s"),
            "source",
            repo=repo,
            revision=revision or "main",
        )
    if isinstance(exc, errors.HFValidationError):
        return SizingError(
            gettext_noop("%(repo)r is neither an existing directory nor a valid Hub repo id"), "source", repo=repo
        )
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return SizingError(
                gettext_noop("the Hub refused access to %(repo)s (HTTP %(status)s); check the token"),
                "token",
                repo=repo,
                status=status,
            )
        return SizingError(
            gettext_noop("the Hub answered an error for %(repo)s: %(error)s"), "source", repo=repo, error=str(exc)
        )
    return SizingError(
        gettext_noop("cannot read %(repo)s from the Hub: %(error)s"), "source", repo=repo, error=str(exc)
    )


def load_hub_metadata(repo: str, revision: str | None = None, token: str | None = None) -> ModelMetadata:
    """config.json plus safetensors header counts of a Hub repo; a repo without safetensors still works."""
    import requests
    from huggingface_hub import errors, get_safetensors_metadata, hf_hub_download

    hub_errors = (
        errors.HfHubHTTPError,
        errors.HFValidationError,
        errors.OfflineModeIsEnabled,
        requests.RequestException,
        OSError,
    )
    try:
        config_path = Path(hf_hub_download(repo, CONFIG_FILE, revision=revision, token=token))
    except hub_errors as exc:
        raise _hub_error(exc, repo, revision, token) from exc
    config = _read_json(config_path, CONFIG_FILE)
    # hf_hub_download returns .../snapshots/<commit>/config.json: the resolved commit for free.
    sha = config_path.parent.name if _COMMIT_SHA.match(config_path.parent.name) else None
    notes: list[str] = []
    params: dict[str, int] | None = None
    files = [CONFIG_FILE]
    try:
        st = get_safetensors_metadata(repo, revision=sha or revision, token=token)
    except errors.NotASafetensorsRepoError:
        notes.append("no safetensors weights in the repo; parameters counted from config.json")
    except errors.SafetensorsParsingError as exc:
        notes.append(f"safetensors headers could not be parsed ({exc}); parameters counted from config.json")
    except hub_errors as exc:
        raise _hub_error(exc, repo, revision, token) from exc
    else:
        params = dict(st.parameter_count)
        files += ([SAFETENSORS_INDEX] if st.sharded else []) + sorted(st.files_metadata)
    return ModelMetadata(
        config=config,
        safetensors_params=params,
        total_params=sum(params.values()) if params else None,
        files=files,
        revision_sha=sha,
        source=repo,
        local=False,
        notes=notes,
    )


def looks_like_path(source: str) -> bool:
    """Repo ids are `name` or `org/name`; anything with more slashes or a path prefix means a directory."""
    return source.startswith(("/", "./", "../", "~", ".\\")) or source.count("/") > 1 or "\\" in source


def load_model_metadata(source: str, revision: str | None = None, token: str | None = None) -> ModelMetadata:
    """Metadata of a local model directory or a Hub repo id (`revision`/`token` apply to the Hub only)."""
    source = (source or "").strip()
    if not source:
        raise SizingError(gettext_noop("give a Hub repo id or a local model directory"), "source")
    path = Path(source).expanduser()
    if path.is_dir():
        return load_local_metadata(path)
    if path.exists():
        raise SizingError(
            gettext_noop("%(source)s is a file; give the model directory that holds config.json"),
            "source",
            source=source,
        )
    if looks_like_path(source):
        raise SizingError(gettext_noop("directory %(source)s does not exist"), "source", source=source)
    return load_hub_metadata(source, revision=revision, token=token)
