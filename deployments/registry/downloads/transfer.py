"""Transfer: fetch the chosen files of a pinned revision into staging, a few at once, resumable and verified."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import BinaryIO

import requests
from huggingface_hub import hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import get_session, hf_raise_for_status

from deployments.registry.downloads.errors import (
    Cancelled,
    DownloadError,
    _disk_error,
    _hub_error,
    _Mismatch,
    _network_error,
    _offline_error,
    _Transient,
)
from deployments.registry.downloads.hub import (
    _TRANSIENT_ERRORS,
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    _endpoint,
    _headers,
    _is_transient_status,
    _retry_after,
    _retry_delay,
)
from deployments.registry.downloads.progress import CANCEL_CHECK_S, Progress, _Meter
from deployments.registry.downloads.selection import _gb
from deployments.registry.downloads.snapshot import RemoteFile, RepoSnapshot
from deployments.registry.downloads.staging import (
    _check_repo_path,
    _flush,
    _fsync_dir,
    _locked,
    _part_path,
    _remove,
    _Sidecar,
    _stat_key,
    _write,
)
from deployments.registry.downloads.verify import _hash_into, _Hashes

logger = logging.getLogger(__name__)

READ_TARGET_S = 0.25
MIN_READ = 64 * 1024
PARALLEL_FILES = 4


def download(
    snapshot: RepoSnapshot,
    files: list[RemoteFile],
    staging: Path,
    *,
    endpoint: str | None,
    token: str | None,
    on_progress: Callable[[Progress], None],
    should_cancel: Callable[[], bool],
    chunk_size: int = 8 * 2**20,
    progress_interval: float = 0.5,
    retries: int = 5,
) -> dict[str, str]:
    """Download ``files`` of ``snapshot`` (at its pinned commit) into ``staging``; returns ``{path: sha256}``.

    Each file streams to ``<path>.part``, hashed as it is written, resumes from the bytes already there (after
    hashing them) with a ``Range`` request, is fsynced, checked against the commit's size and sha256 (LFS) or
    git blob id (other files), then renamed to ``<path>``. Verified files are recorded in a sidecar and skipped
    on the next call without re-reading them. Network failures are retried with backoff, resuming each time;
    ``retries`` counts consecutive attempts that brought no new bytes. A resumed file that fails verification is
    fetched once more from scratch before the error is raised (the kept bytes may be what was damaged).

    ``should_cancel`` is polled about every 0.1 s (reads are sized to take ~0.25 s at the measured rate):
    :class:`Cancelled` is raised with the ``.part`` files kept. ``on_progress`` is called at the start, at most
    every ``progress_interval`` seconds, and at the end of each file. ``done`` only goes back when a server
    ignores a resume request or a resumed file has to be fetched again.
    """
    staging = Path(staging)
    unique: dict[str, RemoteFile] = {}
    for remote in files:
        _check_repo_path(remote.path, snapshot.repo_id)
        unique.setdefault(remote.path, remote)
    files = list(unique.values())
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, staging.name, staging.parent) from exc
    meter = _download_meter(snapshot, files, staging, on_progress, should_cancel, progress_interval)
    with _locked(staging):
        job = _Download(
            snapshot, files, staging, endpoint=endpoint, token=token, meter=meter, chunk_size=chunk_size,
            retries=retries,
        )  # fmt: skip
        return job.run()


def _download_meter(
    snapshot: RepoSnapshot,
    files: list[RemoteFile],
    staging: Path,
    on_progress: Callable[[Progress], None],
    should_cancel: Callable[[], bool],
    interval: float,
) -> _Meter:
    """The meter of one download; a cancel says how much is on disk, and where."""
    meter = _Meter(
        on_progress,
        should_cancel,
        total=sum(f.size for f in files),
        files_total=len(files),
        interval=interval,
    )

    def cancelled_message() -> str:
        return (
            f"The download of {snapshot.repo_id} was cancelled with {_gb(meter.done)} of {_gb(meter.total)} on disk "
            f"in {staging}."
        )

    meter.cancelled_message = cancelled_message
    return meter


def _first_failure(futures: list[Future]) -> BaseException | None:
    """The exception to raise for the whole download, if any: a real failure wins over the others' "stopped"."""
    failure: BaseException | None = None
    for future in futures:
        exc = future.exception()
        if exc is not None and (failure is None or (isinstance(failure, Cancelled) and not isinstance(exc, Cancelled))):
            failure = exc
    return failure


def _source_headers(snapshot: RepoSnapshot, token: str | None) -> dict[str, str]:
    if snapshot.provider == "modelscope":
        from deployments.registry.downloads import modelscope

        return modelscope.headers(token)
    return _headers(token)


def _file_url(snapshot: RepoSnapshot, path: str, endpoint: str | None) -> str:
    """Where ``path`` at the snapshot's commit is fetched from, in the API of the source that listed it."""
    if snapshot.provider == "modelscope":
        from deployments.registry.downloads import modelscope

        return modelscope.file_url(snapshot.repo_id, path, commit=snapshot.commit, endpoint=endpoint)
    return hf_hub_url(snapshot.repo_id, path, revision=snapshot.commit, endpoint=endpoint)


class _FileState:
    """One file being written: its open ``.part``, running hashes and how many bytes it holds."""

    def __init__(self, remote: RemoteFile, handle: BinaryIO, offset: int):
        self.remote = remote
        self.handle = handle
        self.hashes = _Hashes(remote)
        self.offset = offset

    def restart(self, meter: _Meter) -> None:
        """Drop what the file holds and start it over from byte 0."""
        self.handle.seek(0)
        self.handle.truncate(0)
        self.hashes.reset()
        self.offset = 0
        meter.rewind_file()


class _Download:
    def __init__(
        self,
        snapshot: RepoSnapshot,
        files: list[RemoteFile],
        staging: Path,
        *,
        endpoint: str | None,
        token: str | None,
        meter: _Meter,
        chunk_size: int,
        retries: int,
    ):
        self.snapshot = snapshot
        self.files = files
        self.staging = staging
        self.endpoint = endpoint
        self.token = token
        self.meter = meter
        self.chunk_size = max(int(chunk_size), MIN_READ)
        self.retries = max(int(retries), 0)
        # Ranges and sizes are of the raw bytes: no content encoding.
        self.headers = {**_source_headers(snapshot, token), "Accept-Encoding": "identity"}
        self.session = get_session()
        self.sidecar = _Sidecar(staging)

    def run(self) -> dict[str, str]:
        self.sidecar.doc.update(
            repo_id=self.snapshot.repo_id,
            commit=self.snapshot.commit,
            selected=sorted(f.path for f in self.files),
        )
        self.sidecar.save()
        self.meter.emit()
        result: dict[str, str] = {}

        def one(remote: RemoteFile) -> None:
            self.meter.check_cancel()  # throttled: thousands of small files must not mean thousands of queries
            result[remote.path] = self._one(remote)
            self.meter.finish_file()

        failure = self._in_parallel(one)
        self.meter.emit()
        if failure is not None:
            raise failure
        return {remote.path: result[remote.path] for remote in self.files}

    def _in_parallel(self, one: Callable[[RemoteFile], None]) -> BaseException | None:
        """Run ``one`` for each file; what to raise, if anything."""
        # A few files at once: the link stays busy while another file is hashed, fsynced and renamed (and
        # per-connection limits of CDNs add up), as huggingface_hub's own snapshot_download does. This thread
        # polls the cancel flag and reports progress for all of them.
        with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_FILES, len(self.files)))) as pool:
            futures = [pool.submit(one, remote) for remote in self.files]
            pending = set(futures)
            while pending:
                _done, pending = wait(pending, timeout=CANCEL_CHECK_S)
                with contextlib.suppress(Cancelled):
                    self.meter.tick()  # a cancel sets `aborted`: the file threads stop at their next chunk
        return _first_failure(futures)

    # -- one file ------------------------------------------------------------------------------------------------

    def _one(self, remote: RemoteFile) -> str:
        final = self.staging / remote.path
        digest = self._already_there(remote, final)
        if digest:
            return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        part = _part_path(final)
        hashes = self._fetch(remote, part)
        os.replace(part, final)
        _fsync_dir(final.parent)
        return self._record(remote, final, hashes)

    def _already_there(self, remote: RemoteFile, final: Path) -> str | None:
        """The sha256 of ``final`` if it is already ``remote``: recorded in the sidecar, or verified now."""
        known = self.sidecar.matches(remote, final)
        if known:
            self.meter.start_file(remote.path, remote.size, "verifying")
            self.meter.add(remote.size, fetched=False)
            return known
        if final.exists() or final.is_symlink():
            return self._verify_existing(remote, final)
        return None

    def _verify_existing(self, remote: RemoteFile, final: Path) -> str | None:
        """A complete file without a record (e.g. the sidecar was lost): keep it if it verifies, else delete it."""
        if _stat_key(final) is None or final.stat().st_size != remote.size:
            _remove(final)
            return None
        self.meter.start_file(remote.path, remote.size, "verifying")
        hashes = _Hashes(remote)
        size = _hash_into(final, hashes.update, self.meter)
        if hashes.problems(size):
            self.meter.rewind_file()
            final.unlink()
            return None
        return self._record(remote, final, hashes)

    def _record(self, remote: RemoteFile, final: Path, hashes: _Hashes) -> str:
        """Note ``final`` as verified in the sidecar; its sha256."""
        digest = hashes.sha256.hexdigest()
        self.sidecar.record(remote.path, final, digest, hashes.git.hexdigest() if hashes.git else None)
        return digest

    def _fetch(self, remote: RemoteFile, part: Path) -> _Hashes:
        """Bring ``part`` to the verified file; a resumed file that fails verification is fetched once more whole."""
        resumed = part.exists() and part.stat().st_size > 0
        try:
            return self._transfer(remote, part)
        except _Mismatch as mismatch:
            self._drop(part)
            if not resumed:
                raise self._corrupt(remote, mismatch) from None
            # The bytes kept from an earlier run may be what is wrong (a crash of the host can leave
            # garbage at the end of a file): fetch the whole file once more before calling it corrupt.
            logger.warning("%s: resumed file failed verification (%s); downloading it again", remote.path, mismatch)
        try:
            return self._transfer(remote, part)
        except _Mismatch as mismatch:
            self._drop(part)
            raise self._corrupt(remote, mismatch) from None

    def _drop(self, part: Path) -> None:
        part.unlink(missing_ok=True)
        self.meter.rewind_file()

    def _corrupt(self, remote: RemoteFile, mismatch: _Mismatch) -> DownloadError:
        return DownloadError(
            f"{remote.path} from {self.snapshot.repo_id}@{self.snapshot.commit[:12]} failed verification: {mismatch}.",
            cause="checksum_mismatch",
            next_step="The damaged file was deleted. Retry; if it fails again the Hub or the mirror serves "
            "a corrupted file: report it, or choose another revision.",
        )

    def _transfer(self, remote: RemoteFile, part: Path) -> _Hashes:
        """Bring ``part`` to the full file, resuming from its bytes; fsync it; raise _Mismatch if it does not verify."""
        # "ab": creates the file if needed, never truncates what an earlier run wrote, always writes at its end.
        # Unbuffered: chunks are large, and a failed write (disk full) must not be retried by a buffer flush.
        with open(part, "ab", buffering=0) as handle:
            state = self._resume(remote, handle, part)
            self._fill(state)
            _flush(state.handle, part)
            problems = state.hashes.problems(state.offset)
        if problems:
            raise _Mismatch("; ".join(problems))
        return state.hashes

    def _resume(self, remote: RemoteFile, handle: BinaryIO, part: Path) -> _FileState:
        """The state of ``part`` as an earlier run left it, its bytes hashed again (they are the resume point)."""
        state = _FileState(remote, handle, handle.tell())
        if state.offset > remote.size:  # longer than the file can be: not ours to trust
            state.handle.truncate(0)
            state.offset = 0
        if state.offset:
            self.meter.start_file(remote.path, remote.size, "verifying")
            _hash_into(part, state.hashes.update, self.meter, limit=state.offset)
        self.meter.start_file(remote.path, remote.size, "downloading")
        self.meter.set_file_done(state.offset)
        return state

    def _fill(self, state: _FileState) -> None:
        """Request the rest of the file until it is all there; ``retries`` attempts in a row without new bytes."""
        remote = state.remote
        failures = 0
        while state.offset < remote.size:
            before = state.offset
            try:
                self._stream(state)
                if state.offset < remote.size:
                    raise _Transient(f"the connection ended after {state.offset} of {remote.size} bytes")
            except _Transient as exc:
                failures = 1 if state.offset > before else failures + 1  # progress resets the count
                self._back_off(state, exc, failures)

    def _back_off(self, state: _FileState, exc: _Transient, failures: int) -> None:
        """Sleep before the next attempt (honouring cancels), or give up once ``retries`` is spent."""
        if failures > self.retries:
            raise _network_error(
                f"Downloading {state.remote.path} failed after {self.retries} retries: {exc}", self.endpoint
            ) from exc
        delay = exc.retry_after
        if delay is None:
            delay = _retry_delay(failures)
        logger.warning(
            "%s: %s; retry %d/%d in %.1f s from byte %d",
            state.remote.path,
            exc,
            failures,
            self.retries,
            delay,
            state.offset,
        )
        self.meter.sleep(delay)

    # -- one request ---------------------------------------------------------------------------------------------

    def _stream(self, state: _FileState) -> None:
        """One GET from ``state.offset`` to the end (or until the connection fails), appending to the .part."""
        with self._request(state) as response:
            self._check_response(state, response)
            self._receive(state, response)

    def _request(self, state: _FileState) -> requests.Response:
        remote = state.remote
        url = _file_url(self.snapshot, remote.path, self.endpoint)
        headers = dict(self.headers)
        if state.offset:
            headers["Range"] = f"bytes={state.offset}-"
        try:
            return self.session.get(
                url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S), allow_redirects=True
            )
        except OfflineModeIsEnabled as exc:
            raise _offline_error() from exc
        except _TRANSIENT_ERRORS as exc:
            raise _Transient(f"request failed: {exc}") from exc

    def _receive(self, state: _FileState, response: requests.Response) -> None:
        """Append the body to the .part until it ends, hashing it as it is written."""
        # No content decoding was asked for (identity): read the raw bytes, one buffer per read, no copies.
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        decode = encoding not in ("", "identity")
        raw = response.raw
        read_size = MIN_READ
        started = time.monotonic()
        received = 0
        while True:
            try:
                chunk = raw.read(read_size, decode_content=decode)
            except _TRANSIENT_ERRORS as exc:
                raise _Transient(f"connection lost: {exc}") from exc
            if not chunk:
                return
            self._append(state, chunk)
            received += len(chunk)
            read_size = self._next_read_size(read_size, received, time.monotonic() - started)
            self.meter.tick()

    def _append(self, state: _FileState, chunk: bytes) -> None:
        remote = state.remote
        n = len(chunk)
        if state.offset + n > remote.size:
            raise _Mismatch(f"the server sent more than the {remote.size} bytes the commit lists")
        _write(state.handle, chunk, remote.path, self.staging)
        state.hashes.update(chunk)
        state.offset += n
        self.meter.add(n, fetched=True)

    def _next_read_size(self, read_size: int, received: int, elapsed: float) -> int:
        # Size reads to last about READ_TARGET_S at the measured rate: large (up to chunk_size) on a fast
        # link, small on a slow one, so a cancel is seen within a fraction of a second either way. At most
        # doubling per read: the first reads come from socket buffers and overstate the rate.
        if elapsed <= 0:
            return read_size
        target = int(received / elapsed * READ_TARGET_S) // MIN_READ * MIN_READ
        return min(max(target, MIN_READ), 2 * read_size, self.chunk_size)

    def _check_response(self, state: _FileState, response: requests.Response) -> None:
        """Raise for errors; adopt a 200 answer to a range request by starting the file over."""
        self._raise_for_error(state, response)
        status = response.status_code
        if status == 206:
            self._check_range(state, response)
        elif status == 200:
            self._check_whole(state, response)
        else:
            raise DownloadError(
                f"Unexpected answer HTTP {status} for {state.remote.path} from {_endpoint(self.endpoint)}.",
                cause="hub_error",
                next_step="Retry; if it persists, check the endpoint (a proxy may be rewriting answers).",
            )

    def _raise_for_error(self, state: _FileState, response: requests.Response) -> None:
        status = response.status_code
        if _is_transient_status(response):
            raise _Transient(f"the Hub answered HTTP {status}", _retry_after(response))
        if status == 416:
            # The server's file is shorter than what we hold: the bytes on disk are not a prefix of it.
            state.restart(self.meter)
            raise _Transient("the server refused the resume point (HTTP 416); starting the file over")
        if status >= 400 and self.snapshot.provider == "modelscope":
            from deployments.registry.downloads import modelscope

            raise modelscope.file_error(
                response,
                repo_id=self.snapshot.repo_id,
                path=state.remote.path,
                endpoint=self.endpoint,
                token=self.token,
            )
        if status >= 400:
            try:
                hf_raise_for_status(response)
            except HfHubHTTPError as exc:
                raise _hub_error(
                    exc,
                    repo_id=self.snapshot.repo_id,
                    revision=self.snapshot.revision,
                    token=self.token,
                    endpoint=self.endpoint,
                    path=state.remote.path,
                ) from exc

    def _check_range(self, state: _FileState, response: requests.Response) -> None:
        """A 206 must start at the resume point and be of a file the commit's size."""
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != state.offset:
            state.restart(self.meter)
            raise _Transient("the server answered another range than asked; starting the file over")
        if match.group(3) != "*" and int(match.group(3)) != state.remote.size:
            raise _Mismatch(f"expected {state.remote.size} bytes, the server has {match.group(3)}")

    def _check_whole(self, state: _FileState, response: requests.Response) -> None:
        """A 200 is the whole file: what a resumed file holds is dropped."""
        remote = state.remote
        if state.offset:
            logger.info("%s: the server ignored the range request; starting the file over", remote.path)
            state.restart(self.meter)
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) != remote.size:
            raise _Mismatch(f"expected {remote.size} bytes, the server sends {length}")
