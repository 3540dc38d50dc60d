"""A Hugging Face Hub stand-in for tests: serves repos built by the tests over real HTTP.

It answers the routes huggingface_hub 0.36 calls, with the status codes and headers its
``hf_raise_for_status`` turns into the right exceptions:

* ``GET /api/{models,datasets,spaces}/{repo_id}`` and ``.../revision/{revision}`` (``model_info`` /
  ``repo_info``; ``?blobs=True`` adds size, blobId and lfs to the siblings; ``?expand=...`` keeps only the
  listed fields), and ``.../tree/{revision}[/{path}]`` (``list_repo_tree`` / ``list_repo_files``,
  ``?recursive=True``, ``?expand=True`` adds ``lastCommit``).
* ``HEAD`` and ``GET /{repo_id}/resolve/{revision}/{filename}`` (``datasets/`` or ``spaces/`` in front for
  those repo types): ``ETag`` (LFS: the quoted sha256; otherwise the quoted git blob sha1), ``X-Repo-Commit``,
  ``X-Linked-Etag`` and ``X-Linked-Size`` for LFS files, ``Content-Length``, ``Accept-Ranges: bytes``;
  ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` answer 206 with ``Content-Range``, an unsatisfiable range
  answers 416. LFS files are served directly (no CDN redirect): the client accepts a 200 carrying these headers.

Errors, as the Hub gives them: unknown repo (or private without the token) -> 401 without a token / 404 with
one, ``X-Error-Code: RepoNotFound``; gated repo file without a token -> 401, with another token -> 403, both
``X-Error-Code: GatedRepo`` (repo info and tree stay public, as on the Hub); unknown revision -> 404
``RevisionNotFound``; unknown file -> 404 ``EntryNotFound`` (with ``X-Repo-Commit``).

Test knobs: ``throttle_bytes_per_second`` (per response), ``fail_after_bytes`` (cut the next file body that is
longer than this after that many bytes, once), ``corrupt_filename`` (serve that file with its first byte flipped,
while its metadata still names the right bytes), ``bytes_served`` / ``bytes_served_per_file`` (file body bytes
actually written) and ``requests`` (one :class:`RequestRecord` per request).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "DEFAULT_LFS_SUFFIXES",
    "LFS_THRESHOLD_BYTES",
    "TEST_TOKEN",
    "HubServer",
    "RequestRecord",
    "git_blob_sha1",
    "lfs_pointer",
    "make_safetensors",
    "make_sharded_safetensors",
    "safetensors_parameter_counts",
]

TEST_TOKEN = "hf_test_token"
"""The token that opens gated and private repos unless ``HubServer(required_token=...)`` says otherwise."""
LFS_THRESHOLD_BYTES = 1024 * 1024
"""Files larger than this are stored as LFS unless ``add_repo(lfs=...)`` says otherwise."""
DEFAULT_LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack")
"""Suffixes the Hub's default ``.gitattributes`` tracks with LFS (the ones model repos use)."""

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_TRUE = {"1", "true", "yes", "on"}

# Bytes per element, by safetensors dtype name.
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Content helpers


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as ``blobId`` / ``oid`` and ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


def lfs_pointer(content: bytes) -> bytes:
    """The git-lfs pointer file that stands in git for ``content``."""
    sha256 = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n".encode()


def make_safetensors(
    tensors: Mapping[str, tuple[str, Sequence[int]]], *, metadata: Mapping[str, str] | None = None
) -> bytes:
    """A valid safetensors file with zero-filled data: ``{"name": ("F16", [4096, 4096]), ...}``.

    Layout: 8-byte little-endian header length, the JSON header (``dtype``, ``shape``, ``data_offsets`` per
    tensor, optional ``__metadata__`` of strings) padded with spaces to 8 bytes, then the tensor data in order.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        if dtype not in _DTYPE_SIZES:
            raise ValueError(f"unknown safetensors dtype {dtype!r} for tensor {name!r}")
        shape = [int(d) for d in shape]
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape} of tensor {name!r}")
        nbytes = math.prod(shape) * _DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def make_sharded_safetensors(
    tensors: Mapping[str, tuple[str, Sequence[int]]],
    num_shards: int = 2,
    *,
    prefix: str = "model",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, bytes]:
    """Shards in the transformers layout: ``{prefix}-00001-of-0000N.safetensors`` ... plus
    ``{prefix}.safetensors.index.json`` (``weight_map`` and ``metadata.total_size``, the bytes of tensor data).

    Tensors go to the shards in order, in contiguous runs of near-equal counts. Returns ``{filename: bytes}``,
    ready for :meth:`HubServer.add_repo` (merge it with the other files of the repo).
    """
    names = list(tensors)
    if not 1 <= num_shards <= max(len(names), 1):
        raise ValueError(f"num_shards must be between 1 and the number of tensors ({len(names)}), got {num_shards}")
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    total_size = 0
    per_shard, extra = divmod(len(names), num_shards)
    start = 0
    for index in range(num_shards):
        count = per_shard + (1 if index < extra else 0)
        chunk = {name: tensors[name] for name in names[start : start + count]}
        start += count
        filename = f"{prefix}-{index + 1:05d}-of-{num_shards:05d}.safetensors"
        files[filename] = make_safetensors(chunk)
        for name, (dtype, shape) in chunk.items():
            weight_map[name] = filename
            total_size += math.prod(int(d) for d in shape) * _DTYPE_SIZES[dtype]
    index_doc = {"metadata": {**(metadata or {}), "total_size": total_size}, "weight_map": weight_map}
    files[f"{prefix}.safetensors.index.json"] = json.dumps(index_doc, indent=2).encode()
    return files


def safetensors_parameter_counts(data: bytes) -> dict[str, int]:
    """Parameters per dtype in a safetensors file (read from its header only). ValueError if it is not one."""
    if len(data) < 8:
        raise ValueError("too short for a safetensors file")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError("safetensors header runs past the end of the file")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    counts: dict[str, int] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            counts[info["dtype"]] = counts.get(info["dtype"], 0) + math.prod(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad safetensors entry for {name!r}") from exc
    return counts


# --------------------------------------------------------------------------------------------------------------
# Repository model


@dataclass(frozen=True)
class _Blob:
    content: bytes
    is_lfs: bool
    git_sha1: str  # blob id in git: of the content, or of the LFS pointer
    sha256: str
    pointer_size: int | None

    @classmethod
    def build(cls, content: bytes, is_lfs: bool) -> _Blob:
        sha256 = hashlib.sha256(content).hexdigest()
        if is_lfs:
            pointer = lfs_pointer(content)
            return cls(content, True, git_blob_sha1(pointer), sha256, len(pointer))
        return cls(content, False, git_blob_sha1(content), sha256, None)

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def etag(self) -> str:
        return self.sha256 if self.is_lfs else self.git_sha1

    def lfs_info(self, sha_key: str) -> dict[str, Any] | None:
        if not self.is_lfs:
            return None
        return {sha_key: self.sha256, "size": self.size, "pointerSize": self.pointer_size}


@dataclass(frozen=True)
class _Commit:
    sha: str
    files: dict[str, _Blob]
    date: str  # ISO 8601 with milliseconds and Z, as the Hub writes it


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    gated: bool | str = False
    private: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag name -> commit sha
    commits: dict[str, _Commit] = field(default_factory=dict)
    created: str = ""

    def resolve(self, revision: str) -> _Commit | None:
        sha = self.refs.get(revision)
        if sha is None and _COMMIT_RE.match(revision):
            sha = revision
        return self.commits.get(sha) if sha else None


class RequestRecord(NamedTuple):
    """One request the server answered. ``path`` is percent-decoded and without the query string."""

    method: str
    path: str
    range: str | None
    status: int
    query: str
    token: str | None


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _now_iso() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """``(start, end_inclusive)`` for one satisfiable range; None to ignore the header (absent, malformed or
    several ranges: RFC 9110 lets a server answer 200 with everything); False when unsatisfiable (416)."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return False
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return False
    return start, min(end, size - 1)


# --------------------------------------------------------------------------------------------------------------
# HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests' pooled sessions expect
    server_version = "HubServer/1.0"
    timeout = 30  # idle keep-alive connections end instead of holding a thread forever
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _not_allowed(self) -> None:
        self._dispatch(head=False, allowed=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _dispatch(self, *, head: bool, allowed: bool = True) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        token = self._token()
        record = {
            "method": self.command,
            "path": unquote(url.path),
            "range": self.headers.get("Range"),
            "query": url.query,
            "token": token,
        }
        try:
            body_length = self.headers.get("Content-Length") or "0"
            if body_length.isdigit() and int(body_length):  # drain a request body: the connection stays usable
                self.rfile.read(int(body_length))
            if not allowed:
                raise _HTTPError(405, f"Method {self.command} not allowed")
            hub._route(self, url.path, parse_qs(url.query, keep_blank_values=True), token, head, record)
        except _HTTPError as err:
            hub._log(record, err.status)
            self._send_json(err.status, {"error": err.message}, head=head, code=err.code, extra=err.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in this test double: keep it for the fixture to report, then drop
            with hub._lock:
                hub.errors.append(f"{self.command} {self.path}: {exc!r}")
            raise

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        return (value.strip() or None) if scheme.lower() == "bearer" else None

    def _send_json(
        self,
        status: int,
        payload: Any,
        *,
        head: bool,
        code: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", f"Root={uuid.uuid4()}")
        if code:
            self.send_header("X-Error-Code", code)
        if status >= 400:
            self.send_header("X-Error-Message", payload["error"])
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: HubServer):
        super().__init__(address, _Handler)
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End kept-alive connections, so no handler thread outlives the server."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class HubServer:
    """A threaded Hub-compatible server on 127.0.0.1 and a free port. See the module docstring.

    ``with HubServer() as hub: sha = hub.add_repo("org/model", {"config.json": b"{}"})``; point the client at
    ``hub.endpoint`` (tests: the ``hub_server`` fixture of ``tests.support.hub_fixtures`` does it all).
    """

    def __init__(
        self,
        *,
        required_token: str | None = TEST_TOKEN,
        throttle_bytes_per_second: float | None = None,
        fail_after_bytes: int | None = None,
        host: str = "127.0.0.1",
    ):
        self.required_token = required_token
        """The token that opens gated and private repos (``Authorization: Bearer ...``). None: any token does."""
        self.throttle_bytes_per_second = throttle_bytes_per_second
        """Rate limit of each file body, None for unlimited. Can change while the server runs."""
        self.fail_after_bytes = fail_after_bytes
        """Cut the next file body longer than this after this many bytes, then reset to None (once)."""
        self.fail_filename: str | None = None
        """When set, ``fail_after_bytes`` applies only to a file of this path (in any repo)."""
        self.corrupt_filename: str | None = None
        """When set, a file of this path (in any repo) is served with its first byte flipped: wrong bytes, right
        metadata, as a damaged blob or a faulty proxy gives them."""
        self.failures_injected = 0
        self.bytes_served = 0
        """File body bytes handed to the socket (resolve GETs; JSON API bodies are not counted)."""
        self.bytes_served_per_file: dict[tuple[str, str], int] = {}
        """``(repo_id, filename) -> bytes``, as ``bytes_served``."""
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []
        """Exceptions raised inside the server (bugs of this double); the fixture fails the test on any."""
        self._host = host
        self._lock = threading.RLock()
        # Total bandwidth of the server's link, shared by all connections (None: unlimited).
        self.link_bytes_per_second: float | None = None
        self._link_lock = threading.Lock()
        self._link_clock = 0.0
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        if self._server is not None:
            return self
        self._server = _Server((self._host, 0), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("HubServer is not started")
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``, for ``HF_ENDPOINT`` / ``HfApi(endpoint=...)``."""
        return f"http://{self._host}:{self.port}"

    def url(self, repo_id: str, filename: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The resolve URL of a file, built like ``huggingface_hub.hf_hub_url``."""
        return f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"

    # -- repos -----------------------------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        revision: str = "main",
        lfs: Iterable[str] | None = None,
        gated: bool | str = False,
        private: bool = False,
        commit_sha: str | None = None,
        repo_type: str = "model",
    ) -> str:
        """Add a commit holding ``files`` and point ``revision`` at it; returns the commit sha.

        ``revision`` is a branch or tag name ("main", "v1.0", "refs/pr/1"), or a 40-hex commit sha (then the
        commit gets that sha and no name). Calling again with another revision adds it to the same repo; with the
        same name it moves the name to the new commit (the old one stays reachable by its sha). ``lfs`` lists the
        LFS paths (default: larger than 1 MiB or a weights suffix, see ``DEFAULT_LFS_SUFFIXES``). ``gated``
        (True, "auto" or "manual") and ``private`` apply to the whole repo, the latest call wins. The commit sha,
        when not given, is a sha1 of the repo id and the files, so the same content gives the same sha.
        """
        if repo_type not in _URL_PREFIX:
            raise ValueError(f"repo_type must be one of {sorted(_URL_PREFIX)}, got {repo_type!r}")
        parts = repo_id.split("/")
        if not 1 <= len(parts) <= 2 or not all(parts):
            raise ValueError(f"repo_id must be 'name' or 'namespace/name', got {repo_id!r}")
        for path in files:
            segments = path.split("/")
            if not path or path.startswith("/") or any(s in ("", ".", "..") for s in segments):
                raise ValueError(f"invalid file path {path!r}")
        lfs_paths = None if lfs is None else set(lfs)
        if lfs_paths is not None and not lfs_paths <= set(files):
            raise ValueError(f"lfs names files that are not in the repo: {sorted(lfs_paths - set(files))}")
        blobs = {}
        for path, content in files.items():
            content = bytes(content)
            if lfs_paths is None:
                is_lfs = len(content) > LFS_THRESHOLD_BYTES or path.lower().endswith(DEFAULT_LFS_SUFFIXES)
            else:
                is_lfs = path in lfs_paths
            blobs[path] = _Blob.build(content, is_lfs)

        if _COMMIT_RE.match(revision):
            if commit_sha is not None and commit_sha != revision:
                raise ValueError("revision is a commit sha and commit_sha differs from it")
            commit_sha, ref = revision, None
        else:
            ref = revision
        if commit_sha is None:
            digest = hashlib.sha1(f"{repo_type}\0{repo_id}\0".encode(), usedforsecurity=False)
            for path in sorted(blobs):
                digest.update(f"{path}\0{blobs[path].sha256}\0".encode())
            commit_sha = digest.hexdigest()
        elif not _COMMIT_RE.match(commit_sha):
            raise ValueError(f"commit_sha must be 40 lowercase hex digits, got {commit_sha!r}")

        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                repo = self._repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, created=_now_iso())
            repo.gated = "auto" if gated is True else gated
            repo.private = private
            repo.commits[commit_sha] = _Commit(commit_sha, blobs, _now_iso())
            if ref is not None:
                repo.refs[ref] = commit_sha
        return commit_sha

    def commit_sha(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The commit a revision points at (KeyError if unknown)."""
        with self._lock:
            commit = self._repos[(repo_type, repo_id)].resolve(revision)
        if commit is None:
            raise KeyError(revision)
        return commit.sha

    # -- counters ------------------------------------------------------------------------------------------------

    def served(self, repo_id: str, filename: str) -> int:
        """File body bytes served for one file (all revisions)."""
        with self._lock:
            return self.bytes_served_per_file.get((repo_id, filename), 0)

    def requests_to(self, filename: str, method: str | None = None) -> list[RequestRecord]:
        """Logged resolve requests whose path ends with ``/filename``."""
        with self._lock:
            return [
                r
                for r in self.requests
                if "/resolve/" in r.path and r.path.endswith("/" + filename) and method in (None, r.method)
            ]

    def reset_stats(self) -> None:
        with self._lock:
            self.bytes_served = 0
            self.bytes_served_per_file.clear()
            self.requests.clear()
            self.failures_injected = 0

    def _log(self, record: dict[str, Any], status: int) -> None:
        with self._lock:
            self.requests.append(RequestRecord(status=status, **record))

    def _count(self, key: tuple[str, str], n: int) -> None:
        with self._lock:
            self.bytes_served += n
            self.bytes_served_per_file[key] = self.bytes_served_per_file.get(key, 0) + n

    def _claim_failure(self, filename: str, length: int) -> int | None:
        with self._lock:
            limit = self.fail_after_bytes
            if limit is None or length <= limit or self.fail_filename not in (None, filename):
                return None
            self.fail_after_bytes = None
            self.failures_injected += 1
            return max(int(limit), 0)

    # -- routing -----------------------------------------------------------------------------------------------------

    def _route(
        self,
        handler: _Handler,
        raw_path: str,
        query: dict[str, list[str]],
        token: str | None,
        head: bool,
        record: dict[str, Any],
    ) -> None:
        segments = raw_path.split("/")[1:]
        if len(segments) >= 2 and segments[0] == "api" and segments[1] in _REPO_TYPES:
            repo_type = _REPO_TYPES[segments[1]]
            repo, rest = self._split_repo(repo_type, segments[2:], api=True)
            status, payload = self._api(repo_type, repo, rest, query, token)
            self._log(record, status)
            handler._send_json(status, payload, head=head)
            return
        repo_type = "model"
        if segments and segments[0] in ("datasets", "spaces"):
            repo_type = _REPO_TYPES[segments[0]]
            segments = segments[1:]
        repo, rest = self._split_repo(repo_type, segments, api=False)
        self._resolve(handler, repo_type, repo, rest, token, head, record)

    def _split_repo(self, repo_type: str, segments: list[str], *, api: bool) -> tuple[str, list[str]]:
        """Split ``namespace/name/rest...`` or ``name/rest...`` (repo ids without a namespace)."""
        markers = ("revision", "tree") if api else ("resolve",)
        for n in (2, 1):
            if len(segments) < n or not all(segments[:n]):
                continue
            rest = segments[n:]
            if (api and not rest) or (rest and rest[0] in markers and len(rest) >= 2):
                return unquote("/".join(segments[:n])), rest
        raise _HTTPError(404, "Not Found")

    def _visible_repo(self, repo_type: str, repo_id: str, token: str | None) -> _Repo:
        """The repo if this caller may see it; the Hub hides private repos behind RepoNotFound."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized(token)):
            status = 404 if token else 401
            raise _HTTPError(status, "Repository not found", "RepoNotFound")
        return repo

    def _authorized(self, token: str | None) -> bool:
        return token is not None and self.required_token in (None, token)

    def _commit(self, repo: _Repo, revision: str) -> _Commit:
        with self._lock:
            commit = repo.resolve(revision)
        if commit is None:
            raise _HTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -- /api/{type}s/... --------------------------------------------------------------------------------------------

    def _api(
        self, repo_type: str, repo_id: str, rest: list[str], query: dict[str, list[str]], token: str | None
    ) -> tuple[int, Any]:
        repo = self._visible_repo(repo_type, repo_id, token)
        if not rest:
            return 200, self._info(repo, self._commit(repo, "main"), query)
        if rest[0] == "revision":
            return 200, self._info(repo, self._commit(repo, unquote("/".join(rest[1:]))), query)
        commit = self._commit(repo, unquote(rest[1]))
        return 200, self._tree(commit, unquote("/".join(rest[2:])).strip("/"), query)

    def _info(self, repo: _Repo, commit: _Commit, query: dict[str, list[str]]) -> dict[str, Any]:
        blobs = (query.get("blobs") or ["false"])[-1].lower() in _TRUE
        expand = [value for item in query.get("expand", []) for value in item.split(",") if value]
        siblings = []
        for path in sorted(commit.files):
            blob = commit.files[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs and not expand:
                sibling.update(size=blob.size, blobId=blob.git_sha1)
                if blob.is_lfs:
                    sibling["lfs"] = blob.lfs_info("sha256")
            siblings.append(sibling)
        namespace = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo.repo_id,
            "author": namespace,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(blob.size for blob in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            config = self._config(commit)
            if config is not None:
                info["config"] = config
            safetensors = self._safetensors(commit)
            if safetensors is not None:
                info["safetensors"] = safetensors
        if expand:
            return {key: value for key, value in info.items() if key in {"_id", "id", *expand}}
        return info

    @staticmethod
    def _json_file(commit: _Commit, path: str) -> dict[str, Any] | None:
        blob = commit.files.get(path)
        if blob is None:
            return None
        try:
            doc = json.loads(blob.content)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return doc if isinstance(doc, dict) else None

    def _config(self, commit: _Commit) -> dict[str, Any] | None:
        """The Hub's summary of config.json (not the whole file): architectures, model_type, quantization."""
        config = self._json_file(commit, "config.json")
        if config is None:
            return None
        summary = {k: config[k] for k in ("architectures", "model_type", "quantization_config") if k in config}
        tokenizer = self._json_file(commit, "tokenizer_config.json")
        if tokenizer is not None:
            keys = ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template")
            summary["tokenizer_config"] = {k: tokenizer[k] for k in keys if k in tokenizer}
        return summary

    @staticmethod
    def _safetensors(commit: _Commit) -> dict[str, Any] | None:
        parameters: dict[str, int] = {}
        found = False
        for path, blob in commit.files.items():
            if not path.endswith(".safetensors"):
                continue
            try:
                counts = safetensors_parameter_counts(blob.content)
            except ValueError:
                continue
            found = True
            for dtype, count in counts.items():
                parameters[dtype] = parameters.get(dtype, 0) + count
        if not found:
            return None
        return {"parameters": parameters, "total": sum(parameters.values())}

    @staticmethod
    def _tree(commit: _Commit, base: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        recursive = (query.get("recursive") or ["false"])[-1].lower() in _TRUE
        expand = (query.get("expand") or ["false"])[-1].lower() in _TRUE
        directories: dict[str, list[str]] = {}  # dir -> files below it (any depth)
        for path in commit.files:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                directories.setdefault("/".join(parts[:depth]), []).append(path)
        if base and base not in directories:
            raise _HTTPError(404, f"Entry not found: {base}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        prefix = base + "/" if base else ""
        last_commit = {"id": commit.sha, "title": "Upload files", "date": commit.date}

        def wanted(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        entries: list[dict[str, Any]] = []
        for path in sorted(directories):
            if wanted(path):
                digest = hashlib.sha1(usedforsecurity=False)
                for member in sorted(directories[path]):
                    digest.update(f"{member}\0{commit.files[member].git_sha1}\0".encode())
                entry: dict[str, Any] = {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}
                if expand:
                    entry["lastCommit"] = last_commit
                entries.append(entry)
        for path in sorted(commit.files):
            if wanted(path):
                blob = commit.files[path]
                entry = {"type": "file", "oid": blob.git_sha1, "size": blob.size, "path": path}
                if blob.is_lfs:
                    entry["lfs"] = blob.lfs_info("oid")
                if expand:
                    entry["lastCommit"] = last_commit
                entries.append(entry)
        return entries

    # -- /{repo_id}/resolve/{revision}/{filename} ------------------------------------------------------------------

    def _resolve(
        self,
        handler: _Handler,
        repo_type: str,
        repo_id: str,
        rest: list[str],
        token: str | None,
        head: bool,
        record: dict[str, Any],
    ) -> None:
        repo = self._visible_repo(repo_type, repo_id, token)
        if repo.gated and not self._authorized(token):
            kind = {"model": "model", "dataset": "dataset", "space": "space"}[repo_type]
            if token is None:
                message = (
                    f"Access to {kind} {repo_id} is restricted. You must have access to it and be authenticated "
                    "to access it. Please log in."
                )
                raise _HTTPError(401, message, "GatedRepo")
            message = f"Access to {kind} {repo_id} is restricted and you are not in the authorized list."
            raise _HTTPError(403, message, "GatedRepo")
        commit = self._commit(repo, unquote(rest[1]))
        filename = unquote("/".join(rest[2:]))
        blob = commit.files.get(filename)
        if blob is None:
            raise _HTTPError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})

        size = blob.size
        span = _parse_range(handler.headers.get("Range"), size)
        if span is False:
            raise _HTTPError(416, "Requested Range Not Satisfiable", None, {"Content-Range": f"bytes */{size}"})
        start, end = span if span else (0, size - 1)
        status = 206 if span else 200
        length = end - start + 1

        self._log(record, status)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(length))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("ETag", f'"{blob.etag}"')
        handler.send_header("X-Repo-Commit", commit.sha)
        handler.send_header("Content-Disposition", f'inline; filename="{filename.rsplit("/", 1)[-1]}"')
        handler.send_header("X-Request-Id", f"Root={uuid.uuid4()}")
        if blob.is_lfs:
            handler.send_header("X-Linked-Etag", f'"{blob.sha256}"')
            handler.send_header("X-Linked-Size", str(size))
        if span:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        handler.end_headers()
        if not head and length > 0:
            content = blob.content
            if self.corrupt_filename == filename:
                content = bytes([content[0] ^ 0xFF]) + content[1:]
            self._send_body(handler, memoryview(content)[start : end + 1], (repo_id, filename))

    def _link_wait(self, n: int) -> None:
        """One shared link for all connections: parallel downloads split its bandwidth, as on a real network."""
        with self._link_lock:
            now = time.monotonic()
            self._link_clock = max(self._link_clock, now) + n / self.link_bytes_per_second
            delay = self._link_clock - now
        if delay > 0:
            time.sleep(delay)

    def _send_body(self, handler: _Handler, data: memoryview, key: tuple[str, str]) -> None:
        cut = self._claim_failure(key[1], len(data))
        limit = len(data) if cut is None else cut
        began = time.monotonic()
        sent = 0
        while sent < limit:
            rate = self.throttle_bytes_per_second
            chunk = 64 * 1024 if not rate else max(1024, min(64 * 1024, int(rate / 20)))
            n = min(chunk, limit - sent)
            # Counted before the write: a client that has read the whole body must find it counted.
            self._count(key, n)
            handler.wfile.write(data[sent : sent + n])
            sent += n
            if rate:
                delay = began + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if self.link_bytes_per_second:
                self._link_wait(n)
        if cut is not None:  # simulate a dropped connection: the client sees fewer bytes than Content-Length
            handler.close_connection = True
            handler.wfile.flush()
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
