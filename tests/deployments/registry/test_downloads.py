"""The download engine against the Hub test server: pinning, choosing, resuming, verifying, cancelling, publishing."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from huggingface_hub import HfApi
from huggingface_hub.utils import hf_raise_for_status

from deployments.registry import downloads
from deployments.registry.downloads import (
    GB,
    Cancelled,
    DownloadError,
    Progress,
    RemoteFile,
    check_space,
    choose_files,
    discard,
    download,
    hash_directory,
    publish,
    required_space,
    resolve,
    validate_layout,
)
from tests.support.fixtures import ROOT
from tests.support.hub_server import HubServer, make_safetensors

CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode()
MiB = 2**20


def noise(n: int, seed: int = 0) -> bytes:
    """Incompressible, reproducible bytes: a hash bug cannot hide behind zeros."""
    return random.Random(seed).randbytes(n)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MODEL = {
    "config.json": CONFIG,
    "generation_config.json": b'{"do_sample": true}',
    "tokenizer.json": b'{"version": "1.0", "model": {}}',
    "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
    "special_tokens_map.json": b"{}",
    "empty.txt": b"",
    "README.md": b"# tiny\n",
    "original/params.json": b'{"dim": 64}',
    "model-00001-of-00002.safetensors": make_safetensors({"embed.weight": ("F16", [256, 1024])}),
    "model-00002-of-00002.safetensors": noise(3 * MiB + 17, seed=2),
    "model.safetensors.index.json": b'{"weight_map": {}}',
    "pytorch_model.bin": noise(MiB, seed=3),
    "pytorch_model.bin.index.json": b'{"weight_map": {}}',
    "modeling_custom.py": b"import os\n",
}
DEFAULT_CHOICE = [
    "README.md",
    "config.json",
    "empty.txt",
    "generation_config.json",
    "model.safetensors.index.json",
    "original/params.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
]


class Recorder:
    """Collects progress callbacks."""

    def __init__(self) -> None:
        self.events: list[Progress] = []

    def __call__(self, progress: Progress) -> None:
        self.events.append(progress)


def fetch(hub: HubServer, snapshot, files, staging: Path, *, token=None, **kwargs) -> dict[str, str]:
    kwargs.setdefault("on_progress", Recorder())
    kwargs.setdefault("should_cancel", lambda: False)
    return download(snapshot, files, staging, endpoint=hub.endpoint, token=token, **kwargs)


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def settle(hub: HubServer) -> None:
    """Wait until the server stops counting bytes: a handler whose client hung up writes on until the pipe breaks."""
    last = -1
    while hub.bytes_served != last:
        last = hub.bytes_served
        time.sleep(0.2)


def gets(hub: HubServer, filename: str) -> list:
    return [r for r in hub.requests_to(filename) if r.method == "GET"]


@pytest.fixture
def model(hub_server: HubServer):
    hub_server.add_repo("acme/tiny", MODEL)
    return resolve("acme/tiny", None, endpoint=hub_server.endpoint, token=None)


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(downloads.hub, "BACKOFF_BASE_S", 0.01)


# --------------------------------------------------------------------------------------------------------------
# Resolve and choose


def test_resolve_pins_the_commit_and_lists_sizes_and_hashes(hub_server: HubServer, model):
    assert model.repo_id == "acme/tiny"
    assert model.revision == "main"
    assert model.commit == hub_server.commit_sha("acme/tiny")
    assert (model.gated, model.private, model.license) == (False, False, None)
    files = {f.path: f for f in model.files}
    assert set(files) == set(MODEL)
    assert {path: f.size for path, f in files.items()} == {path: len(data) for path, data in MODEL.items()}
    shard = files["model-00002-of-00002.safetensors"]
    assert shard.lfs and shard.sha256 == sha256(MODEL["model-00002-of-00002.safetensors"])
    config = files["config.json"]
    assert not config.lfs and config.sha256 is None
    assert config.blob_id == hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG, usedforsecurity=False).hexdigest()

    # A tag resolves to its own commit, and a later move of main does not change a pinned snapshot.
    v1 = hub_server.add_repo("acme/tiny", {"config.json": b"{}"}, revision="v1")
    assert resolve("acme/tiny", "v1", endpoint=hub_server.endpoint, token=None).commit == v1
    assert resolve("acme/tiny", model.commit, endpoint=hub_server.endpoint, token=None).commit == model.commit


def test_choose_files_takes_configs_tokenizer_and_one_weight_format(model):
    chosen = choose_files(model.files)

    assert [f.path for f in chosen] == DEFAULT_CHOICE  # small files first, then the weights
    paths = {f.path for f in chosen}
    assert "pytorch_model.bin" not in paths and "pytorch_model.bin.index.json" not in paths
    assert "modeling_custom.py" not in paths  # trust_remote_code is off

    # include adds (even what was skipped), exclude removes and wins.
    more = {f.path for f in choose_files(model.files, include=["*.py", "pytorch_model.bin"])}
    assert more == paths | {"modeling_custom.py", "pytorch_model.bin"}
    fewer = {f.path for f in choose_files(model.files, include=["*.py"], exclude=["*.md", "*.py"])}
    assert fewer == paths - {"README.md"}
    both = {f.path for f in choose_files(model.files, prefer_safetensors=False)}
    assert both == paths | {"pytorch_model.bin", "pytorch_model.bin.index.json"}

    # Without safetensors the .bin weights are the weights.
    legacy = [f for f in model.files if not f.path.endswith(".safetensors")]
    assert "pytorch_model.bin" in {f.path for f in choose_files(legacy)}


# --------------------------------------------------------------------------------------------------------------
# Download


def test_full_download_verifies_every_file_and_reports_progress(hub_server: HubServer, model, tmp_path):
    chosen = choose_files(model.files)
    staging = tmp_path / "staging"
    recorder = Recorder()

    result = fetch(hub_server, model, chosen, staging, on_progress=recorder)

    assert result == {f.path: sha256(MODEL[f.path]) for f in chosen}
    on_disk = {path: data for path, data in tree(staging).items() if not path.startswith(".")}
    assert on_disk == {f.path: MODEL[f.path] for f in chosen}
    assert not list(staging.rglob("*.part"))
    # Every byte was fetched once, and only from the pinned commit.
    assert hub_server.bytes_served == sum(f.size for f in chosen)
    assert all(f"/resolve/{model.commit}/" in r.path for r in hub_server.requests if "/resolve/" in r.path)

    events = recorder.events
    total = sum(f.size for f in chosen)
    assert all(e.total == total for e in events)
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert events[-1].done == total and events[-1].files_done == len(chosen) == events[-1].files_total
    assert events[-1].rate_bps > 0 and events[-1].eta_s == 0
    finished = {e.file for e in events if e.file_done == e.file_total}
    assert finished >= {f.path for f in chosen}
    assert all(0 <= e.file_done <= e.file_total for e in events)


def test_verified_files_are_skipped_and_changed_ones_checked(hub_server: HubServer, model, tmp_path):
    chosen = choose_files(model.files)
    staging = tmp_path / "staging"
    expected = fetch(hub_server, model, chosen, staging)
    hub_server.reset_stats()

    # Unchanged: nothing fetched, nothing re-read (the sidecar vouches for them).
    recorder = Recorder()
    assert fetch(hub_server, model, chosen, staging, on_progress=recorder) == expected
    assert hub_server.requests == []
    assert recorder.events[-1].done == recorder.events[-1].total

    # Touched but intact: hashed again, not fetched.
    shard = staging / "model-00002-of-00002.safetensors"
    os.utime(shard, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert fetch(hub_server, model, chosen, staging) == expected
    assert hub_server.requests == []

    # Damaged with the same size: fetched again.
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert fetch(hub_server, model, chosen, staging) == expected
    assert shard.read_bytes() == MODEL["model-00002-of-00002.safetensors"]
    assert hub_server.served("acme/tiny", "model-00002-of-00002.safetensors") == len(data)
    assert hub_server.bytes_served == len(data)


def test_a_dropped_connection_is_retried_from_the_bytes_on_disk(hub_server: HubServer, tmp_path, fast_backoff):
    data = noise(4 * MiB, seed=7)
    hub_server.add_repo("acme/flaky", {"model.safetensors": data})
    hub_server.fail_after_bytes = int(len(data) * 0.4)
    snapshot = resolve("acme/flaky", None, endpoint=hub_server.endpoint, token=None)

    result = fetch(hub_server, snapshot, snapshot.files, tmp_path / "staging")

    assert result == {"model.safetensors": sha256(data)}
    assert (tmp_path / "staging" / "model.safetensors").read_bytes() == data
    assert hub_server.failures_injected == 1
    assert hub_server.served("acme/flaky", "model.safetensors") <= 1.05 * len(data)
    requests_made = gets(hub_server, "model.safetensors")
    assert len(requests_made) == 2
    assert requests_made[0].range is None
    assert requests_made[1].range.startswith("bytes=") and requests_made[1].status == 206


def test_resume_after_a_crash_fetches_only_the_missing_bytes(hub_server: HubServer, tmp_path):
    data = noise(5 * MiB, seed=11)
    hub_server.add_repo("acme/big", {"model.safetensors": data, "config.json": CONFIG})
    snapshot = resolve("acme/big", None, endpoint=hub_server.endpoint, token=None)
    staging = tmp_path / "staging"
    staging.mkdir()
    kept = int(len(data) * 0.4)
    (staging / "model.safetensors.part").write_bytes(data[:kept])  # what a killed worker left behind
    recorder = Recorder()

    result = fetch(hub_server, snapshot, choose_files(snapshot.files), staging, on_progress=recorder)

    assert result["model.safetensors"] == sha256(data)
    assert (staging / "model.safetensors").read_bytes() == data
    served = hub_server.served("acme/big", "model.safetensors")
    assert served == len(data) - kept
    assert served <= 0.65 * len(data)
    assert gets(hub_server, "model.safetensors")[0].range == f"bytes={kept}-"
    assert {e.phase for e in recorder.events} >= {"downloading"}
    assert recorder.events[-1].done == len(data) + len(CONFIG)


CHILD = """
import json, sys
from pathlib import Path
from deployments.registry.downloads import RemoteFile, RepoSnapshot, download
doc = json.loads(sys.argv[1])
snapshot = RepoSnapshot(**{**doc, "files": [RemoteFile(**f) for f in doc["files"]]})
download(snapshot, snapshot.files, Path(sys.argv[2]), endpoint=sys.argv[3], token=None,
         on_progress=lambda p: None, should_cancel=lambda: False)
"""


def test_a_worker_killed_mid_download_resumes_without_refetching(hub_server: HubServer, tmp_path):
    data = noise(8 * MiB, seed=17)
    hub_server.add_repo("acme/killed", {"model.safetensors": data})
    snapshot = resolve("acme/killed", None, endpoint=hub_server.endpoint, token=None)
    staging = tmp_path / "staging"
    part = staging / "model.safetensors.part"
    hub_server.throttle_bytes_per_second = 4_000_000
    root = ROOT
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(dataclasses.asdict(snapshot)), str(staging), hub_server.endpoint],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size > 3 * MiB):
            assert child.poll() is None and time.monotonic() < deadline, "the child download did not start"
            time.sleep(0.02)
    finally:
        child.kill()  # SIGKILL: no cleanup, the lock is released by the kernel
        child.wait()
    kept = part.stat().st_size
    settle(hub_server)
    hub_server.throttle_bytes_per_second = None
    hub_server.reset_stats()

    assert fetch(hub_server, snapshot, snapshot.files, staging) == {"model.safetensors": sha256(data)}
    assert (staging / "model.safetensors").read_bytes() == data
    assert [r.range for r in gets(hub_server, "model.safetensors")] == [f"bytes={kept}-"]
    assert hub_server.served("acme/killed", "model.safetensors") == len(data) - kept


def test_a_damaged_partial_file_is_fetched_again_from_scratch(hub_server: HubServer, tmp_path):
    data = noise(2 * MiB, seed=5)
    hub_server.add_repo("acme/resume", {"model.safetensors": data})
    snapshot = resolve("acme/resume", None, endpoint=hub_server.endpoint, token=None)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "model.safetensors.part").write_bytes(bytes(MiB))  # zeros where the data should be

    result = fetch(hub_server, snapshot, snapshot.files, staging)

    assert result == {"model.safetensors": sha256(data)}
    assert (staging / "model.safetensors").read_bytes() == data
    assert [r.range for r in gets(hub_server, "model.safetensors")] == [f"bytes={MiB}-", None]


def advertise_wrong_sha256(hub: HubServer, repo_id: str, path: str) -> str:
    """Make the server list a wrong lfs.sha256 for ``path`` while serving the real bytes (a corrupted blob)."""
    wrong = "0" * 64
    with hub._lock:
        repo = hub._repos[("model", repo_id)]
        commit = repo.commits[repo.refs["main"]]
        commit.files[path] = dataclasses.replace(commit.files[path], sha256=wrong)
    return wrong


def test_a_file_that_does_not_match_its_hash_is_refused(hub_server: HubServer, tmp_path):
    data = noise(MiB + 3, seed=9)
    hub_server.add_repo("acme/corrupt", {"config.json": CONFIG, "model.safetensors": data})
    wrong = advertise_wrong_sha256(hub_server, "acme/corrupt", "model.safetensors")
    snapshot = resolve("acme/corrupt", None, endpoint=hub_server.endpoint, token=None)
    staging = tmp_path / "staging"

    with pytest.raises(DownloadError) as caught:
        fetch(hub_server, snapshot, choose_files(snapshot.files), staging)

    error = caught.value
    assert error.cause == "checksum_mismatch"
    assert "model.safetensors" in error.message
    assert wrong in error.message and sha256(data) in error.message
    assert not (staging / "model.safetensors").exists()
    assert not (staging / "model.safetensors.part").exists()
    # Nothing can be published from it.
    with pytest.raises(DownloadError) as refused:
        publish(staging, tmp_path / "final", {"repo_id": "acme/corrupt"})
    assert refused.value.cause == "incomplete"
    assert not (tmp_path / "final").exists()


def test_a_regular_file_is_verified_against_its_git_blob_id(hub_server: HubServer, model, tmp_path):
    config = next(f for f in model.files if f.path == "config.json")
    bad = dataclasses.replace(config, blob_id="1" * 40)

    with pytest.raises(DownloadError) as caught:
        fetch(hub_server, model, [bad], tmp_path / "staging")

    assert caught.value.cause == "checksum_mismatch"
    assert "git blob sha1" in caught.value.message and "1" * 40 in caught.value.message


def test_cancel_stops_within_a_second_and_keeps_the_partial_file(hub_server: HubServer, tmp_path):
    data = noise(8 * MiB, seed=13)
    hub_server.add_repo("acme/slow", {"model.safetensors": data})
    snapshot = resolve("acme/slow", None, endpoint=hub_server.endpoint, token=None)
    staging = tmp_path / "staging"
    part = staging / "model.safetensors.part"
    hub_server.throttle_bytes_per_second = 2_000_000
    asked: list[float] = []

    def should_cancel() -> bool:
        if not asked and part.exists() and part.stat().st_size > MiB:
            asked.append(time.monotonic())
        return bool(asked)

    with pytest.raises(Cancelled) as caught:
        fetch(hub_server, snapshot, snapshot.files, staging, should_cancel=should_cancel)
    stopped = time.monotonic()

    assert caught.value.cause == "cancelled"
    assert stopped - asked[0] < 1.0
    kept = part.stat().st_size
    assert MiB < kept < len(data)
    assert data.startswith(part.read_bytes())
    assert not (staging / "model.safetensors").exists()

    # Started again, it resumes from what was kept.
    settle(hub_server)
    hub_server.throttle_bytes_per_second = None
    hub_server.reset_stats()
    assert fetch(hub_server, snapshot, snapshot.files, staging) == {"model.safetensors": sha256(data)}
    assert hub_server.served("acme/slow", "model.safetensors") == len(data) - kept

    discard(staging)
    assert not staging.exists()
    discard(staging)  # absent: nothing to do


def test_server_errors_are_retried_and_missing_files_are_not(hub_server: HubServer, model, tmp_path, monkeypatch):
    session = requests.Session()
    answers = iter([503, 502])

    class Flaky:
        """The real session, except that the first two GETs answer a server error."""

        def get(self, url, **kwargs):
            status = next(answers, None)
            if status is None:
                return session.get(url, **kwargs)
            response = requests.Response()
            response.status_code, response.url = status, url
            response.headers["Retry-After"] = "0"
            response.raw = io.BytesIO(b"busy")
            return response

    monkeypatch.setattr(downloads.transfer, "get_session", Flaky)
    config = next(f for f in model.files if f.path == "config.json")
    assert fetch(hub_server, model, [config], tmp_path / "a") == {"config.json": sha256(CONFIG)}
    assert len(gets(hub_server, "config.json")) == 1  # the two failures never reached the server

    ghost = RemoteFile("ghost.json", 10, None, None, False)
    with pytest.raises(DownloadError) as caught:
        fetch(hub_server, model, [ghost], tmp_path / "b")
    assert caught.value.cause == "file_not_found" and "ghost.json" in caught.value.message
    assert len(gets(hub_server, "ghost.json")) == 1


def test_a_download_refuses_a_staging_directory_another_process_writes(hub_server: HubServer, model, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    with downloads._locked(staging), pytest.raises(DownloadError) as caught:
        fetch(hub_server, model, choose_files(model.files), staging)
    assert caught.value.cause == "busy"


def test_the_network_going_away_ends_with_a_network_error(hub_server: HubServer, model, tmp_path, fast_backoff):
    endpoint = hub_server.endpoint
    hub_server.stop()  # its port is closed now: every connection is refused

    with pytest.raises(DownloadError) as caught:
        download(model, choose_files(model.files), tmp_path / "s", endpoint=endpoint, token=None,
                 on_progress=Recorder(), should_cancel=lambda: False, retries=2)  # fmt: skip
    assert caught.value.cause == "network"
    assert "retry" in caught.value.next_step.lower()

    with pytest.raises(DownloadError) as unreachable:
        resolve("acme/tiny", None, endpoint="http://127.0.0.1:9", token=None)
    assert unreachable.value.cause == "network"


def test_unsafe_file_names_are_refused(hub_server: HubServer, model, tmp_path):
    for path in ("../escape.json", "/etc/passwd", "a/../../b", "model.safetensors.part", ".verified.json"):
        evil = RemoteFile(path=path, size=1, sha256=None, blob_id=None, lfs=False)
        with pytest.raises(DownloadError) as caught:
            fetch(hub_server, model, [evil], tmp_path / "staging")
        assert caught.value.cause == "unsafe_path", path
    assert not (tmp_path / "escape.json").exists()


# --------------------------------------------------------------------------------------------------------------
# Space


def test_check_space_counts_what_is_still_missing_and_speaks_gb(tmp_path):
    files = [
        RemoteFile("model-1.safetensors", 5 * GB, "a" * 64, None, True),
        RemoteFile("model-2.safetensors", 3 * GB, "b" * 64, None, True),
    ]
    staging = tmp_path / "staging"
    assert required_space(files, staging) == 8 * GB

    with pytest.raises(DownloadError) as caught:
        check_space(files, staging, free_bytes=lambda path: 5 * GB)
    error = caught.value
    assert error.cause == "no_space"
    assert "8.0 GB" in error.message and "5.0 GB" in error.message and "1.0 GB" in error.message
    assert "4.0 GB" in error.next_step

    check_space(files, staging, free_bytes=lambda path: 9 * GB)  # 8 GB + 1 GB margin fit exactly
    check_space(files, staging, free_bytes=lambda path: 8 * GB + 10, margin=0)

    # Bytes already on disk count: a complete file needs nothing, a .part only its rest.
    staging.mkdir()
    small = [RemoteFile("a.bin", 10, None, None, False), RemoteFile("b.bin", 10, None, None, False)]
    (staging / "a.bin").write_bytes(b"x" * 10)
    (staging / "b.bin.part").write_bytes(b"x" * 4)
    assert required_space(small, staging) == 6
    check_space(small, staging, margin=0)  # the real disk has 6 bytes


# --------------------------------------------------------------------------------------------------------------
# Hub errors


def test_gated_repos_need_a_token_that_accepted_the_license(hub_server: HubServer, tmp_path):
    hub_server.add_repo("acme/gated", {"config.json": CONFIG, "model.safetensors": noise(1000)}, gated=True)
    token = hub_server.required_token

    with pytest.raises(DownloadError) as anonymous:
        resolve("acme/gated", None, endpoint=hub_server.endpoint, token=None)
    assert anonymous.value.cause == "gated"
    assert anonymous.value.field == "token"
    assert "accept the license" in anonymous.value.next_step.lower() and "token" in anonymous.value.next_step

    with pytest.raises(DownloadError) as other:
        resolve("acme/gated", None, endpoint=hub_server.endpoint, token="hf_someone_else")
    assert other.value.cause == "gated"
    assert "token" in other.value.message

    snapshot = resolve("acme/gated", None, endpoint=hub_server.endpoint, token=token)
    assert snapshot.gated == "auto"
    # The token travels with every file request; without it the download maps the Hub's answer the same way.
    with pytest.raises(DownloadError) as no_token:
        fetch(hub_server, snapshot, snapshot.files, tmp_path / "a")
    assert no_token.value.cause == "gated"
    hub_server.reset_stats()  # files download in parallel: the refused attempt may have asked for it too
    fetch(hub_server, snapshot, snapshot.files, tmp_path / "b", token=token)
    assert gets(hub_server, "model.safetensors")
    assert all(r.token == token for r in gets(hub_server, "model.safetensors"))
    assert token not in json.dumps(no_token.value.as_dict()) + json.dumps(other.value.as_dict())


def test_missing_repo_revision_and_private_repo(hub_server: HubServer, model):
    with pytest.raises(DownloadError) as revision:
        resolve("acme/tiny", "nope", endpoint=hub_server.endpoint, token=None)
    assert (revision.value.cause, revision.value.field) == ("revision_not_found", "revision")
    assert "nope" in revision.value.message

    with pytest.raises(DownloadError) as repo:
        resolve("acme/missing", None, endpoint=hub_server.endpoint, token=None)
    assert (repo.value.cause, repo.value.field) == ("repo_not_found", "repo_id")

    hub_server.add_repo("acme/secret", {"config.json": CONFIG}, private=True)
    with pytest.raises(DownloadError) as private:
        resolve("acme/secret", None, endpoint=hub_server.endpoint, token=None)
    assert private.value.cause == "repo_not_found" and "token" in private.value.next_step
    assert resolve("acme/secret", None, endpoint=hub_server.endpoint, token=hub_server.required_token).private

    with pytest.raises(DownloadError) as invalid:
        resolve("not a/valid//id", None, endpoint=hub_server.endpoint, token=None)
    assert invalid.value.cause == "invalid_repo_id"


def test_a_rejected_token_is_reported_as_unauthorized(hub_server: HubServer, monkeypatch):
    # The test server accepts any token on public repos; the Hub answers an invalid one like this.
    def rejected(self, repo_id, **kwargs):
        response = requests.Response()
        response.status_code = 401
        response.url = f"{hub_server.endpoint}/api/models/{repo_id}/revision/main"
        response.headers["X-Error-Message"] = "Invalid credentials in Authorization header"
        response._content = b'{"error": "Invalid credentials in Authorization header"}'
        hf_raise_for_status(response)

    monkeypatch.setattr(HfApi, "model_info", rejected)
    with pytest.raises(DownloadError) as caught:
        resolve("acme/tiny", None, endpoint=hub_server.endpoint, token="hf_expired")
    assert (caught.value.cause, caught.value.field) == ("unauthorized", "token")
    assert "settings/tokens" in caught.value.next_step


# --------------------------------------------------------------------------------------------------------------
# Publish and discard


def test_publish_renames_the_verified_staging_directory_atomically(hub_server: HubServer, model, tmp_path, monkeypatch):
    chosen = choose_files(model.files)
    staging = tmp_path / "staging" / "acme--tiny"
    final = tmp_path / "models" / "acme--tiny"
    final.parent.mkdir()
    result = fetch(hub_server, model, chosen, staging)
    (staging / "sub").mkdir()
    (staging / "sub" / "x.bin.part").write_bytes(b"partial")  # a file of an earlier, other selection

    seen_before_rename = {}
    rename = downloads._rename_noreplace

    def watch(src, dst):
        seen_before_rename.update(final_exists=dst.exists(), manifest=json.loads((src / "manifest.json").read_text()))
        rename(src, dst)

    monkeypatch.setattr(downloads.publishing, "_rename_noreplace", watch)
    publish(staging, final, {"repo_id": model.repo_id, "commit": model.commit, "license": model.license})

    assert seen_before_rename["final_exists"] is False
    assert not staging.exists()
    published = tree(final)
    manifest = json.loads(published.pop("manifest.json"))
    assert published == {f.path: MODEL[f.path] for f in chosen}  # no .part, sidecar, lock or empty directory
    assert manifest == seen_before_rename["manifest"]
    assert manifest["repo_id"] == "acme/tiny" and manifest["commit"] == model.commit
    assert manifest["files"] == [{"path": p, "size": len(MODEL[p]), "sha256": result[p]} for p in sorted(result)]
    assert manifest["total_size"] == sum(len(MODEL[p]) for p in result)
    assert validate_layout(published) == []

    # Publishing onto an existing model refuses and leaves both alone.
    other = tmp_path / "staging2"
    other.mkdir()
    (other / "config.json").write_bytes(CONFIG)
    with pytest.raises(DownloadError) as caught:
        publish(other, final, {})
    assert caught.value.cause == "exists"
    assert (other / "config.json").exists() and (final / "manifest.json").exists()


def test_publish_refuses_an_incomplete_download_and_an_existing_empty_target(hub_server: HubServer, model, tmp_path):
    staging = tmp_path / "staging"
    fetch(hub_server, model, choose_files(model.files), staging)
    (staging / "tokenizer.json").unlink()

    (staging / "model-00002-of-00002.safetensors").rename(staging / "model-00002-of-00002.safetensors.part")
    before = tree(staging)

    with pytest.raises(DownloadError) as caught:
        publish(staging, tmp_path / "final", {})
    assert caught.value.cause == "incomplete" and "tokenizer.json" in caught.value.message
    assert not (tmp_path / "final").exists()
    assert tree(staging) == before  # untouched: the .part and the sidecar are there to resume

    # Even a target that appears between the check and the rename is never replaced (rename(2) would).
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError) as race:
        downloads._rename_noreplace(staging, empty)
    assert race.value.errno == 17  # EEXIST
    assert staging.exists()

    with pytest.raises(DownloadError) as no_parent:
        publish(staging, tmp_path / "missing" / "final", {})
    assert no_parent.value.cause == "invalid_destination"

    # A link would publish whatever it points to: refused, for files and directories alike.
    for name, target in (("linked.json", tmp_path / "elsewhere.json"), ("linked-dir", tmp_path)):
        local = tmp_path / f"local-{name}"
        local.mkdir()
        (local / "config.json").write_bytes(CONFIG)
        (local / name).symlink_to(target)
        with pytest.raises(DownloadError) as linked:
            publish(local, tmp_path / f"final-{name}", {})
        assert linked.value.cause == "invalid_layout" and name in linked.value.message


# --------------------------------------------------------------------------------------------------------------
# Local directories


def test_hash_directory_hashes_regular_files_and_refuses_escaping_links(tmp_path):
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    (root / "config.json").write_bytes(CONFIG)
    weights = noise(MiB + 5, seed=1)
    (root / "sub" / "blob").write_bytes(weights)
    (root / "model.safetensors").symlink_to("sub/blob")  # inside: hashed under the link's name
    recorder = Recorder()

    result = hash_directory(root, on_progress=recorder)

    assert result == {
        "config.json": (len(CONFIG), sha256(CONFIG)),
        "model.safetensors": (len(weights), sha256(weights)),
        "sub/blob": (len(weights), sha256(weights)),
    }
    assert recorder.events[-1].done == recorder.events[-1].total == len(CONFIG) + 2 * len(weights)
    assert recorder.events[-1].phase == "hashing"

    with pytest.raises(Cancelled):
        hash_directory(root, should_cancel=lambda: True)

    outside = tmp_path / "secret"
    outside.write_bytes(b"not yours")
    (root / "leak.bin").symlink_to(outside)
    with pytest.raises(DownloadError) as caught:
        hash_directory(root)
    assert caught.value.cause == "unsafe_path" and "leak.bin" in caught.value.message


def test_validate_layout_names_what_is_missing():
    good = ["config.json", "tokenizer.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert validate_layout(good) == []
    assert validate_layout(["config.json", "tokenizer_config.json", "vocab.json", "pytorch_model.bin"]) == []
    assert validate_layout(["config.json", "tokenizer.model", "model.safetensors"]) == []

    problems = validate_layout(["tokenizer_config.json", "model-00001-of-00003.safetensors", "training_args.bin"])
    text = "\n".join(problems)
    assert len(problems) == 3
    assert "config.json is missing" in text
    assert "no vocabulary" in text
    assert "2 of 3 weight shards are missing" in text and "model-00003-of-00003.safetensors" in text

    no_weights = validate_layout(["config.json", "tokenizer.json", "training_args.bin", "sub/model.safetensors"])
    assert len(no_weights) == 1 and "No weights" in no_weights[0]
    assert any("No tokenizer" in p for p in validate_layout(["config.json", "model.safetensors"]))


def test_progress_is_plain_data():
    progress = Progress("a", 1, 2, 3, 4, 5.0, None)
    assert downloads.progress_dict(progress) == {
        "file": "a", "file_done": 1, "file_total": 2, "done": 3, "total": 4, "rate_bps": 5.0, "eta_s": None,
        "phase": "downloading", "files_done": 0, "files_total": 0,
    }  # fmt: skip


def test_published_weights_are_readable_by_servers_under_the_consoles_umask(hub_server: HubServer, model, tmp_path):
    """`make run` runs with umask 077; the store's files must still be readable by a container's non-root user."""
    staging, final = tmp_path / "staging", tmp_path / "models" / "acme--tiny"
    final.parent.mkdir()
    previous = os.umask(0o077)
    try:
        fetch(hub_server, model, choose_files(model.files), staging)
        publish(staging, final, {"repo_id": model.repo_id})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    for path in final.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
