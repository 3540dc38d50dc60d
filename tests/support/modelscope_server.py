"""A ModelScope stand-in for tests: serves model repos built by the tests over real HTTP, with the routes and
answer shapes the ``modelscope`` SDK's ``HubApi`` reads (modelscope/hub/api.py, file_download.py):

* ``GET /api/v1/models/{owner}/{name}/revisions``: ``{"Code": 200, "Success": true, "Data": {"RevisionMap":
  {"Branches": [{"Revision", "CommitId", "CreatedAt"}], "Tags": [...]}}}``;
* ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=...&Recursive=True``: ``Data.Files``, one entry per
  file (``Name``, ``Path``, ``Type`` "blob", ``Size``, ``Sha256``, ``IsLFS``, ``Revision``/``CommitId``) and per
  directory (``Type`` "tree"); every commit holds a ``.gitattributes`` (the SDK fetches it, the console skips it);
* ``GET /api/v1/models/{owner}/{name}/repo?Revision=...&FilePath=...``: the file; ``Range: bytes=a-`` / ``a-b``
  answers 206 with ``Content-Range``, past the end 416.

``Revision`` is a branch, a tag or a commit id. A private repo needs ``TEST_TOKEN`` as the SDK sends it: the
``m_session_id`` cookie (or ``Authorization: Bearer``); without it the API answers 404 with ``Code`` 10010205
and a ``Message``, as ModelScope does for a model it does not show.

Test knobs: ``throttle_bytes_per_second``; ``revision_commit_ids`` (False: revision entries without
``CommitId``, the client then reads each file's last commit); ``fail_after_bytes`` (cut the next file body
longer than this after that many bytes, once); ``redirect_files_to`` (answer file requests with a 302 to that
base address, as ModelScope sends large files to its object store); :meth:`advertise_wrong_sha256`;
:meth:`served` (file body bytes written); ``ranges`` (the ``Range`` header of every file request, or None).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

TEST_TOKEN = "ms_test_token"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


@dataclass
class _Commit:
    sha: str
    files: dict[str, bytes]
    created: int


@dataclass
class _Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    wrong_sha256: set[str] = field(default_factory=set)  # paths whose listing names other bytes

    def resolve(self, revision: str) -> _Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(sha)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on what was asked, not on logs."""

    def do_GET(self) -> None:
        try:
            self.server.modelscope._route(self)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], modelscope: ModelScopeServer):
        super().__init__(address, _Handler)
        self.modelscope = modelscope


class ModelScopeServer:
    """Start with ``with ModelScopeServer() as server`` (or start()/stop()); ``endpoint`` is its base address."""

    def __init__(self, *, required_token: str = TEST_TOKEN) -> None:
        self.required_token = required_token
        self.repos: dict[str, _Repo] = {}
        self.throttle_bytes_per_second: int | None = None
        self.fail_after_bytes: int | None = None
        self.revision_commit_ids = True  # False: revision entries carry only Revision and CreatedAt
        self.redirect_files_to: str | None = None  # answer file requests with a 302 there (ModelScope's OSS)
        self.ranges: list[str | None] = []
        self._served: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._clock = 1_700_000_000

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> ModelScopeServer:
        self._server = _Server(("127.0.0.1", 0), self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="modelscope-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ModelScopeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- content -------------------------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        branch: str = "master",
        tag: str | None = None,
        private: bool = False,
    ) -> str:
        """Commit ``files`` (the whole tree) to ``branch`` of ``repo_id`` (created if new); the commit's sha."""
        repo = self.repos.setdefault(repo_id, _Repo(private=private))
        repo.private = private
        self._clock += 60
        parent = repo.branches.get(branch, "")
        sha = hashlib.sha1(f"{repo_id}\0{parent}\0{self._clock}".encode(), usedforsecurity=False).hexdigest()
        tree = {".gitattributes": GITATTRIBUTES, **files}  # every ModelScope repo has one; the SDK fetches it
        repo.commits[sha] = _Commit(sha=sha, files=tree, created=self._clock)
        repo.branches[branch] = sha
        if tag:
            repo.tags[tag] = sha
        return sha

    def commit_sha(self, repo_id: str, revision: str = "master") -> str:
        commit = self.repos[repo_id].resolve(revision)
        assert commit is not None
        return commit.sha

    def advertise_wrong_sha256(self, repo_id: str, path: str) -> None:
        """From now on the file list names another sha256 for ``path`` than the bytes served."""
        self.repos[repo_id].wrong_sha256.add(path)

    def served(self, repo_id: str, path: str) -> int:
        with self._lock:
            return self._served.get((repo_id, path), 0)

    # -- answers -------------------------------------------------------------------------------------------------

    def _route(self, handler: _Handler) -> None:
        parts = urlsplit(handler.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if segments[:3] != ["api", "v1", "models"] or len(segments) < 6:
            return handler.send_json(404, {"Code": 10010205, "Success": False, "Message": "not found"})
        repo_id, rest = f"{segments[3]}/{segments[4]}", segments[5:]
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized(handler)):
            return handler.send_json(404, {"Code": 10010205, "Success": False, "Message": f"model {repo_id} not found"})
        if rest == ["revisions"]:
            return handler.send_json(200, _ok({"RevisionMap": self._revision_map(repo)}))
        commit = repo.resolve(query.get("Revision", "master"))
        if commit is None:
            return handler.send_json(404, {"Code": 10010205, "Success": False, "Message": "revision not found"})
        if rest == ["repo", "files"]:
            return handler.send_json(200, _ok({"Files": self._listing(repo, commit)}))
        if rest == ["repo"] and query.get("FilePath") in commit.files and self.redirect_files_to:
            handler.send_response(302)
            handler.send_header("Location", f"{self.redirect_files_to}/{query['FilePath']}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return None
        if rest == ["repo"] and query.get("FilePath") in commit.files:
            return self._send_file(handler, repo_id, query["FilePath"], commit.files[query["FilePath"]])
        return handler.send_json(404, {"Code": 10010205, "Success": False, "Message": "file not found"})

    def _authorized(self, handler: _Handler) -> bool:
        cookie = handler.headers.get("Cookie", "")
        bearer = handler.headers.get("Authorization", "")
        return f"m_session_id={self.required_token}" in cookie or bearer == f"Bearer {self.required_token}"

    def _revision_map(self, repo: _Repo) -> dict[str, list[dict[str, Any]]]:
        def entries(named: dict[str, str]) -> list[dict[str, Any]]:
            return [
                {"Revision": name, "CreatedAt": repo.commits[sha].created}
                | ({"CommitId": sha} if self.revision_commit_ids else {})
                for name, sha in sorted(named.items())
            ]

        return {"Branches": entries(repo.branches), "Tags": entries(repo.tags)}

    def _listing(self, repo: _Repo, commit: _Commit) -> list[dict[str, Any]]:
        listing: list[dict[str, Any]] = []
        dirs = sorted({path.rsplit("/", 1)[0] for path in commit.files if "/" in path})
        listing += [{"Name": d.rsplit("/", 1)[-1], "Path": d, "Type": "tree", "Size": 0} for d in dirs]
        for path, data in sorted(commit.files.items()):
            entry = _entry(path, data, *self._last_change(repo, commit, path))
            if path in repo.wrong_sha256:
                entry["Sha256"] = hashlib.sha256(data + b"other").hexdigest()
            listing.append(entry)
        return listing

    @staticmethod
    def _last_change(repo: _Repo, commit: _Commit, path: str) -> tuple[str, int]:
        """The commit (sha, time) that last changed ``path`` up to ``commit``, as each file entry names it."""
        last = commit
        for older in sorted(repo.commits.values(), key=lambda c: c.created, reverse=True):
            if older.created > commit.created:
                continue
            if older.files.get(path) != commit.files[path]:
                break
            last = older
        return last.sha, last.created

    def _send_file(self, handler: _Handler, repo_id: str, path: str, data: bytes) -> None:
        header = handler.headers.get("Range")
        self.ranges.append(header)
        start, end = 0, len(data) - 1
        if header and header.startswith("bytes="):
            first, _, last = header[6:].partition("-")
            start = int(first)
            end = min(int(last), end) if last else end
            if start >= len(data):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
        body = memoryview(data)[start : end + 1]
        handler.send_response(206 if header else 200)
        if header:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        cut = self._claim_failure(len(body))
        sent = 0
        step = 64 * 1024
        while sent < len(body):
            piece = body[sent : sent + step]
            if cut is not None and sent + len(piece) > cut:
                piece = piece[: cut - sent]
                handler.wfile.write(piece)
                self._count(repo_id, path, len(piece))
                handler.close_connection = True
                handler.wfile.flush()
                return
            handler.wfile.write(piece)
            self._count(repo_id, path, len(piece))
            sent += len(piece)
            if self.throttle_bytes_per_second:
                time.sleep(len(piece) / self.throttle_bytes_per_second)

    def _claim_failure(self, length: int) -> int | None:
        with self._lock:
            if self.fail_after_bytes is not None and length > self.fail_after_bytes:
                cut, self.fail_after_bytes = self.fail_after_bytes, None
                return cut
        return None

    def _count(self, repo_id: str, path: str, n: int) -> None:
        with self._lock:
            self._served[(repo_id, path)] = self._served.get((repo_id, path), 0) + n


def _ok(data: dict[str, Any]) -> dict[str, Any]:
    return {"Code": 200, "Success": True, "Message": "success", "Data": data, "RequestId": "test"}


def _entry(path: str, data: bytes, commit: str, committed: int) -> dict[str, Any]:
    return {
        "Name": path.rsplit("/", 1)[-1],
        "Path": path,
        "Type": "blob",
        "Size": len(data),
        "Sha256": hashlib.sha256(data).hexdigest(),
        "IsLFS": path.endswith(LFS_SUFFIXES),
        "Mode": "100644",
        "Revision": commit,
        "CommitId": commit,
        "CommittedDate": committed,
    }
