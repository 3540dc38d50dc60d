"""The HubServer test double answers the real huggingface_hub 0.36 client the way the Hub does."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path

import pytest
import requests
from huggingface_hub import (
    HfApi,
    constants,
    get_safetensors_metadata,
    hf_hub_download,
    model_info,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.support.hub_server import (
    HubServer,
    git_blob_sha1,
    make_safetensors,
    make_sharded_safetensors,
    safetensors_parameter_counts,
)

CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64}).encode()
TENSORS = {
    "embed.weight": ("BF16", [32, 16]),
    "layer.0.weight": ("F16", [16, 16]),
    "layer.0.bias": ("F32", [16]),
    "lm_head.weight": ("BF16", [32, 16]),
}
PARAMS = {"BF16": 2 * 32 * 16, "F16": 16 * 16, "F32": 16}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model(hub_server: HubServer) -> dict[str, bytes]:
    files = {"config.json": CONFIG, "model.safetensors": make_safetensors(TENSORS), "docs/README.md": b"# tiny\n"}
    hub_server.add_repo("acme/tiny", files)
    return files


def test_model_info_lists_siblings_with_sizes_and_lfs(hub_server: HubServer, model):
    sha = hub_server.commit_sha("acme/tiny")
    info = HfApi(endpoint=hub_server.endpoint).model_info("acme/tiny", revision="main", files_metadata=True)

    assert info.id == "acme/tiny"
    assert info.sha == sha
    assert info.gated is False
    assert info.private is False
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(model)
    assert {name: s.size for name, s in siblings.items()} == {name: len(data) for name, data in model.items()}
    weights = siblings["model.safetensors"]
    assert weights.lfs is not None
    assert weights.lfs.sha256 == sha256(model["model.safetensors"])
    assert weights.lfs.size == len(model["model.safetensors"])
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_sha1(CONFIG)
    assert info.safetensors.parameters == PARAMS
    assert info.safetensors.total == sum(PARAMS.values())
    assert info.config == {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}

    # Without blobs=True the Hub lists names only; the module-level helper goes to the server too.
    plain = model_info("acme/tiny")
    assert plain.sha == sha
    assert [s.size for s in plain.siblings] == [None] * len(model)
    only = HfApi().model_info("acme/tiny", expand=["sha", "safetensors"])
    assert only.sha == sha
    assert only.siblings is None
    assert only.safetensors.total == sum(PARAMS.values())


def test_revisions_branches_tags_and_commit_shas(hub_server: HubServer, model):
    api = HfApi()
    main_sha = hub_server.commit_sha("acme/tiny")
    v1_sha = hub_server.add_repo("acme/tiny", {"config.json": b'{"model_type": "old"}'}, revision="v1")
    pinned = hub_server.add_repo("acme/tiny", {"config.json": b"{}"}, revision="ab" * 20)

    assert len({main_sha, v1_sha, pinned}) == 3
    assert pinned == "ab" * 20
    assert api.model_info("acme/tiny", revision="v1").sha == v1_sha
    assert api.model_info("acme/tiny", revision=main_sha).sha == main_sha
    assert api.model_info("acme/tiny", revision=pinned).sha == pinned
    assert api.model_info("acme/tiny").sha == main_sha
    assert Path(hf_hub_download("acme/tiny", "config.json", revision="v1")).read_bytes() == b'{"model_type": "old"}'
    assert Path(hf_hub_download("acme/tiny", "config.json", revision=main_sha)).read_bytes() == CONFIG
    # Same content, same repo: same commit sha.
    assert hub_server.add_repo("acme/tiny", model, revision="again") == main_sha


def test_hf_hub_download_regular_and_lfs_files_into_the_cache(hub_server: HubServer, model):
    sha = hub_server.commit_sha("acme/tiny")

    config_path = Path(hf_hub_download("acme/tiny", "config.json"))
    weights_path = Path(hf_hub_download("acme/tiny", "model.safetensors"))

    assert config_path.read_bytes() == CONFIG
    assert weights_path.read_bytes() == model["model.safetensors"]
    storage = Path(constants.HF_HUB_CACHE) / "models--acme--tiny"
    assert (storage / "refs" / "main").read_text() == sha
    assert config_path == storage / "snapshots" / sha / "config.json"
    # Blobs are stored under their etag: git blob sha1 for regular files, sha256 for LFS files.
    assert config_path.resolve() == (storage / "blobs" / git_blob_sha1(CONFIG)).resolve()
    assert weights_path.resolve() == (storage / "blobs" / sha256(model["model.safetensors"])).resolve()
    assert try_to_load_from_cache("acme/tiny", "model.safetensors") == str(weights_path)

    # A second call checks the etag with HEAD and downloads nothing.
    served = hub_server.bytes_served
    assert Path(hf_hub_download("acme/tiny", "model.safetensors")) == weights_path
    assert hub_server.bytes_served == served
    assert [r.method for r in hub_server.requests_to("model.safetensors")] == ["HEAD", "GET", "HEAD"]


def test_file_metadata_headers(hub_server: HubServer, model):
    sha = hub_server.commit_sha("acme/tiny")
    weights = model["model.safetensors"]

    lfs = requests.head(hub_server.url("acme/tiny", "model.safetensors"), timeout=5)
    regular = requests.head(hub_server.url("acme/tiny", "docs/README.md"), timeout=5)

    assert lfs.status_code == 200
    assert lfs.headers["ETag"] == f'"{sha256(weights)}"'
    assert lfs.headers["X-Linked-Etag"] == f'"{sha256(weights)}"'
    assert lfs.headers["X-Linked-Size"] == str(len(weights))
    assert lfs.headers["X-Repo-Commit"] == sha
    assert lfs.headers["Content-Length"] == str(len(weights))
    assert lfs.headers["Accept-Ranges"] == "bytes"
    assert regular.headers["ETag"] == f'"{git_blob_sha1(model["docs/README.md"])}"'
    assert "X-Linked-Etag" not in regular.headers
    assert "X-Linked-Size" not in regular.headers
    assert regular.headers["X-Repo-Commit"] == sha


def test_snapshot_download_fetches_every_file(hub_server: HubServer, model):
    sha = hub_server.commit_sha("acme/tiny")

    folder = Path(snapshot_download("acme/tiny"))

    assert folder.name == sha
    assert {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == model


def test_list_repo_files_and_tree(hub_server: HubServer, model):
    api = HfApi()

    assert sorted(api.list_repo_files("acme/tiny")) == sorted(model)
    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree("acme/tiny")}
    assert top == {"docs": "RepoFolder", "config.json": "RepoFile", "model.safetensors": "RepoFile"}
    docs = list(api.list_repo_tree("acme/tiny", path_in_repo="docs", expand=True))
    assert [(e.path, e.size, e.last_commit.oid) for e in docs] == [
        ("docs/README.md", 7, hub_server.commit_sha("acme/tiny"))
    ]
    lfs = next(e for e in api.list_repo_tree("acme/tiny") if e.path == "model.safetensors")
    assert lfs.lfs.sha256 == sha256(model["model.safetensors"])
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("acme/tiny", path_in_repo="nope"))


def test_get_safetensors_metadata_single_file(hub_server: HubServer, model):
    metadata = get_safetensors_metadata("acme/tiny")

    assert metadata.sharded is False
    assert metadata.parameter_count == PARAMS
    assert set(metadata.weight_map) == set(TENSORS)


def test_get_safetensors_metadata_sharded(hub_server: HubServer):
    shards = make_sharded_safetensors(TENSORS, num_shards=3)
    hub_server.add_repo("acme/sharded", {"config.json": CONFIG, **shards})

    metadata = HfApi().get_safetensors_metadata("acme/sharded")

    assert sorted(shards) == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
    ]
    assert metadata.sharded is True
    assert metadata.parameter_count == PARAMS
    assert metadata.metadata == {"total_size": 2 * (2 * 32 * 16) + 2 * 16 * 16 + 4 * 16}
    assert metadata.weight_map["lm_head.weight"] == "model-00003-of-00003.safetensors"
    assert HfApi().model_info("acme/sharded").safetensors.parameters == PARAMS


def test_make_safetensors_layout():
    data = make_safetensors({"a": ("F32", [2, 3]), "b": ("I8", [5]), "s": ("F64", [])}, metadata={"format": "pt"})

    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    assert length % 8 == 0
    assert header["__metadata__"] == {"format": "pt"}
    assert header["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert header["b"]["data_offsets"] == [24, 29]
    assert header["s"]["data_offsets"] == [29, 37]
    assert len(data) == 8 + length + 37
    assert safetensors_parameter_counts(data) == {"F32": 6, "I8": 5, "F64": 1}
    with pytest.raises(ValueError, match="dtype"):
        make_safetensors({"x": ("F7", [1])})


def test_range_requests(hub_server: HubServer):
    data = bytes(range(100))
    hub_server.add_repo("acme/ranges", {"blob.txt": data})
    url = hub_server.url("acme/ranges", "blob.txt")

    head = requests.head(url, timeout=5)
    part = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=5)
    tail = requests.get(url, headers={"Range": "bytes=95-"}, timeout=5)
    suffix = requests.get(url, headers={"Range": "bytes=-3"}, timeout=5)
    clamped = requests.get(url, headers={"Range": "bytes=98-500"}, timeout=5)
    beyond = requests.get(url, headers={"Range": "bytes=100-"}, timeout=5)

    assert head.status_code == 200
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["Content-Length"] == "100"
    assert head.content == b""
    assert part.status_code == 206
    assert part.content == data[10:20]
    assert part.headers["Content-Range"] == "bytes 10-19/100"
    assert part.headers["Content-Length"] == "10"
    assert (tail.status_code, tail.content) == (206, data[95:])
    assert (suffix.status_code, suffix.content) == (206, data[97:])
    assert (clamped.content, clamped.headers["Content-Range"]) == (data[98:], "bytes 98-99/100")
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == "bytes */100"
    assert [(r.method, r.range, r.status) for r in hub_server.requests_to("blob.txt")][:2] == [
        ("HEAD", None, 200),
        ("GET", "bytes=10-19", 206),
    ]


def test_bytes_served_counts_file_bodies_only(hub_server: HubServer, model):
    weights = model["model.safetensors"]
    url = hub_server.url("acme/tiny", "model.safetensors")

    HfApi().model_info("acme/tiny", files_metadata=True)
    requests.head(url, timeout=5)
    assert hub_server.bytes_served == 0
    requests.get(url, headers={"Range": "bytes=10-19"}, timeout=5)
    assert hub_server.bytes_served == 10
    hf_hub_download("acme/tiny", "model.safetensors")
    hf_hub_download("acme/tiny", "config.json")

    assert hub_server.served("acme/tiny", "model.safetensors") == 10 + len(weights)
    assert hub_server.bytes_served_per_file == {
        ("acme/tiny", "model.safetensors"): 10 + len(weights),
        ("acme/tiny", "config.json"): len(CONFIG),
    }
    assert hub_server.bytes_served == 10 + len(weights) + len(CONFIG)
    hub_server.reset_stats()
    assert (hub_server.bytes_served, hub_server.requests) == (0, [])


def test_throttling_slows_downloads(hub_server: HubServer):
    data = b"\x01" * 1_000_000
    hub_server.add_repo("acme/slow", {"weights.bin": data})
    hub_server.throttle_bytes_per_second = 2_000_000  # 0.5 s for the file

    started = time.monotonic()
    path = hf_hub_download("acme/slow", "weights.bin")
    elapsed = time.monotonic() - started

    assert Path(path).read_bytes() == data
    assert elapsed >= 0.4


def test_connection_drop_mid_file_then_resume(hub_server: HubServer, monkeypatch):
    data = hashlib.sha256(b"seed").digest() * (1_048_576 // 32)  # 1 MiB, not all zeros
    hub_server.add_repo("acme/flaky", {"weights.bin": data})
    # The client writes to the .incomplete file per chunk of DOWNLOAD_CHUNK_SIZE (10 MB): smaller chunks let a
    # 1 MiB file keep what arrived before the drop, as a large file would.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub_server.fail_after_bytes = 400_000

    try:
        path = hf_hub_download("acme/flaky", "weights.bin")
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
        path = hf_hub_download("acme/flaky", "weights.bin")

    assert Path(path).read_bytes() == data
    assert hub_server.failures_injected == 1
    assert hub_server.fail_after_bytes is None
    gets = [r for r in hub_server.requests_to("weights.bin") if r.method == "GET"]
    assert gets[0].range is None
    assert gets[-1].range is not None
    assert gets[-1].range.startswith("bytes=")
    assert gets[-1].status == 206
    assert hub_server.served("acme/flaky", "weights.bin") < 2 * len(data)


def test_fail_after_bytes_can_target_one_file(hub_server: HubServer):
    hub_server.add_repo("acme/two", {"a.bin": b"a" * 1000, "b.bin": b"b" * 1000})
    hub_server.fail_after_bytes = 100
    hub_server.fail_filename = "b.bin"

    assert requests.get(hub_server.url("acme/two", "a.bin"), timeout=5).content == b"a" * 1000
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(hub_server.url("acme/two", "b.bin"), timeout=5)
    assert requests.get(hub_server.url("acme/two", "b.bin"), timeout=5).content == b"b" * 1000
    assert hub_server.served("acme/two", "b.bin") == 1100


def test_gated_repo_needs_the_token(hub_server: HubServer):
    hub_server.add_repo("acme/gated", {"config.json": CONFIG}, gated=True)
    token = hub_server.required_token

    # Metadata stays public, as on the Hub; files are not.
    assert HfApi().model_info("acme/gated").gated == "auto"
    with pytest.raises(GatedRepoError) as no_token:
        hf_hub_download("acme/gated", "config.json")
    with pytest.raises(GatedRepoError) as wrong_token:
        hf_hub_download("acme/gated", "config.json", token="hf_someone_else")
    path = hf_hub_download("acme/gated", "config.json", token=token)

    assert no_token.value.response.status_code == 401
    assert wrong_token.value.response.status_code == 403
    assert Path(path).read_bytes() == CONFIG
    assert hub_server.requests_to("config.json", "GET")[-1].token == token


def test_private_repo_is_hidden_without_the_token(hub_server: HubServer):
    hub_server.add_repo("acme/secret", {"config.json": CONFIG}, private=True)
    api = HfApi()

    with pytest.raises(RepositoryNotFoundError) as hidden:
        api.model_info("acme/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/secret", "config.json")

    assert not isinstance(hidden.value, GatedRepoError)
    assert api.model_info("acme/secret", token=hub_server.required_token).private is True
    assert Path(hf_hub_download("acme/secret", "config.json", token=hub_server.required_token)).read_bytes() == CONFIG


def test_errors_map_to_the_client_exceptions(hub_server: HubServer, model):
    api = HfApi()

    with pytest.raises(RepositoryNotFoundError) as missing_repo:
        api.model_info("acme/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/missing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("acme/tiny", revision="nope")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("acme/tiny", "config.json", revision="nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("acme/tiny", "missing.bin")
    with pytest.raises(HfHubHTTPError):
        api.model_info("acme/tiny", revision="nope", token=hub_server.required_token)

    assert not isinstance(missing_repo.value, GatedRepoError)
    assert missing_repo.value.response.status_code == 401
    assert not api.file_exists("acme/tiny", "missing.bin")
    assert api.file_exists("acme/tiny", "config.json")
    assert not api.repo_exists("acme/missing")
    # The client caches a file's absence under the commit the 404 named.
    storage = Path(constants.HF_HUB_CACHE) / "models--acme--tiny"
    assert (storage / ".no_exist" / hub_server.commit_sha("acme/tiny") / "missing.bin").exists()


def test_repo_without_namespace_and_other_repo_types(hub_server: HubServer):
    hub_server.add_repo("gpt2", {"config.json": CONFIG})
    hub_server.add_repo("acme/data", {"train.csv": b"a,b\n1,2\n"}, repo_type="dataset")

    assert HfApi().model_info("gpt2", revision="main").id == "gpt2"
    assert Path(hf_hub_download("gpt2", "config.json")).read_bytes() == CONFIG
    assert Path(hf_hub_download("acme/data", "train.csv", repo_type="dataset")).read_bytes() == b"a,b\n1,2\n"
    assert HfApi().dataset_info("acme/data").sha == hub_server.commit_sha("acme/data", repo_type="dataset")


def test_server_can_be_used_without_the_fixture():
    with HubServer(required_token=None) as hub:
        hub.add_repo("acme/x", {"f.txt": b"hello"}, private=True)
        endpoint = hub.endpoint
        anonymous = requests.get(hub.url("acme/x", "f.txt"), timeout=5)
        any_token = requests.get(hub.url("acme/x", "f.txt"), headers={"Authorization": "Bearer t"}, timeout=5)
        info = requests.get(
            f"{endpoint}/api/models/acme/x/revision/main?blobs=True", headers={"authorization": "Bearer t"}, timeout=5
        )

    assert (anonymous.status_code, anonymous.headers["X-Error-Code"]) == (401, "RepoNotFound")
    assert any_token.content == b"hello"
    assert info.json()["siblings"] == [{"rfilename": "f.txt", "size": 5, "blobId": git_blob_sha1(b"hello")}]
    with pytest.raises(requests.ConnectionError):
        requests.get(endpoint, timeout=2)
