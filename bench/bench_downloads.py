"""Downloads: our engine's throughput over a bare huggingface_hub snapshot_download of the same files from the
same server throttled to a realistic link, same run; and bytes re-fetched after kill -9 at ~40 %."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from bench.common import Figure, median

LINK_BYTES_PER_SECOND = 100 * 10**6
FILE_MB, FILES, ROUNDS = 48, 3, 3


def _files() -> dict[str, bytes]:
    files = {"config.json": b'{"model_type": "llama"}'}
    for i in range(FILES):
        block = hashlib.sha256(str(i).encode()).digest() * (2**20 // 32)
        files[f"model-{i + 1:05d}-of-{FILES:05d}.safetensors"] = block * FILE_MB
    return files


def _ours(server, repo: str, target: Path) -> float:
    from deployments.registry import downloads

    snapshot = downloads.resolve(repo, None, endpoint=server.endpoint, token=None)
    files = downloads.choose_files(snapshot.files)
    start = time.perf_counter()
    downloads.download(
        snapshot,
        files,
        target,
        endpoint=server.endpoint,
        token=None,
        on_progress=lambda p: None,
        should_cancel=lambda: False,
    )
    return time.perf_counter() - start


def _bare(server, repo: str, target: Path) -> float:
    from huggingface_hub import snapshot_download

    start = time.perf_counter()
    snapshot_download(repo, endpoint=server.endpoint, local_dir=target, cache_dir=target / ".cache", token=False)
    return time.perf_counter() - start


def _killed_child(endpoint: str, repo: str, staging: str) -> None:
    from deployments.registry import downloads

    snapshot = downloads.resolve(repo, None, endpoint=endpoint, token=None)
    downloads.download(
        snapshot,
        downloads.choose_files(snapshot.files),
        Path(staging),
        endpoint=endpoint,
        token=None,
        on_progress=lambda p: None,
        should_cancel=lambda: False,
        chunk_size=2**20,
    )


def _refetched_after_kill(server, repo: str, total: int, work: Path) -> float:
    staging = work / "killed"
    server.reset_stats()
    child = multiprocessing.get_context("fork").Process(
        target=_killed_child, args=(server.endpoint, repo, str(staging))
    )
    child.start()
    while child.is_alive():
        on_disk = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) if staging.exists() else 0
        if on_disk >= 0.4 * total:
            os.kill(child.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    child.join()
    _ours(server, repo, staging)  # the restarted job
    served = server.bytes_served
    return (served - total) / total * 100


def run() -> list[Figure]:
    from _pytest.monkeypatch import MonkeyPatch

    from tests.support.hub_fixtures import point_huggingface_hub_at
    from tests.support.hub_server import HubServer

    files = _files()
    total = sum(len(data) for data in files.values())
    work = Path(tempfile.mkdtemp(prefix="bench-downloads-"))
    patch = MonkeyPatch()
    try:
        with HubServer() as server:
            point_huggingface_hub_at(server.endpoint, work / "hf-home", patch)
            server.add_repo("bench/model", files)
            server.link_bytes_per_second = LINK_BYTES_PER_SECOND
            ours, bare = [], []
            for i in range(ROUNDS):  # interleaved, fresh directories each time
                ours.append(_ours(server, "bench/model", work / f"ours-{i}"))
                bare.append(_bare(server, "bench/model", work / f"bare-{i}"))
            server.link_bytes_per_second = 40 * 10**6
            refetched = _refetched_after_kill(server, "bench/model", total, work)
    finally:
        patch.undo()
        shutil.rmtree(work, ignore_errors=True)
    ours_rate, bare_rate = total / median(ours), total / median(bare)
    return [
        Figure(
            "download_throughput_over_bare_snapshot_download",
            ours_rate / bare_rate,
            "x",
            ">=",
            0.95,
            f"{ours_rate / 1e6:.0f} MB/s ours vs {bare_rate / 1e6:.0f} MB/s snapshot_download, {total / 1e6:.0f} MB "
            f"over a {LINK_BYTES_PER_SECOND / 1e6:.0f} MB/s link, median of {ROUNDS}",
        ),
        Figure(
            "download_refetched_after_kill",
            refetched,
            "%",
            "<=",
            5,
            f"kill -9 at ~40 % of {total / 1e6:.0f} MB, restart: bytes served beyond one copy",
        ),
    ]
