"""Agent side of a host-to-host model copy, through the console's relay (deployments/registry/copy_relay.py).

The sending host PUTs each file of a ready artifact to the console in pieces, asking first how much the console holds
(HEAD), so a broken transfer resumes; the receiving host GETs each file once the console holds it whole, with
workers.datasets.fetch_file (Range to resume, sha256 checked as it streams). Plain HTTP and files, no Django: the token
goes in the Authorization header only."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import requests

from workers.datasets import DatasetFetchError, fetch_file

PIECE_BYTES = 8 << 20
TIMEOUT = (10.0, 120.0)
RETRIES = 4  # attempts in a row that moved no byte
BACKOFF_S = 1.0
WAIT_POLL_S = 2.0


class CopyError(Exception):
    """The copy could not be made; the message says why and what to do."""


def file_url(base: str, copy_id: int, relpath: str) -> str:
    return f"{base.rstrip('/')}/internal/models/copies/{copy_id}/files/{relpath}"


def confined(directory: Path, relpath: str) -> Path:
    """`directory/relpath`, refused when it resolves outside `directory` (a `..` or a link pointing out)."""
    root = directory.resolve()
    path = (root / relpath).resolve()
    if root not in path.parents:
        raise CopyError(f"{relpath} lies outside {directory}; the copy is refused.")
    return path


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail") or response.reason)
    except (ValueError, AttributeError):
        return response.reason or str(response.status_code)


def send_files(
    base: str,
    copy_id: int,
    token: str,
    directory: Path,
    files: dict[str, str],
    *,
    piece_bytes: int = PIECE_BYTES,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    log: Callable[[str], None] = lambda text: None,
    cancelled: Callable[[], bool] = lambda: False,
    progress: Callable[[int, str], None] = lambda done, name: None,
) -> int:
    """Send every file of `files` ({relpath: sha256}) under `directory` to the console; bytes sent this time."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {token}"})
    sent = done = 0
    with session:
        for relpath in sorted(files):
            path = confined(directory, relpath)
            try:
                size = path.stat().st_size
            except OSError as error:
                raise CopyError(
                    f"{relpath} cannot be read in {directory} ({error.strerror or error}): the model on this host is "
                    "not whole; run its integrity check."
                ) from None
            url = file_url(base, copy_id, relpath)
            failures = 0
            while True:
                if cancelled():
                    raise CopyError("The copy was cancelled.")
                try:
                    head = session.head(url, timeout=TIMEOUT)
                    if head.status_code != 200:
                        _refused(head, relpath)
                    offset = int(head.headers.get("X-Received-Bytes", "0"))
                    if offset:
                        log(f"{relpath}: the console holds {offset} of {size} bytes; sending from there.")
                    sent += _send_rest(session, url, path, offset, size, piece_bytes, cancelled)
                    break
                except (requests.RequestException, _Retry) as error:
                    failures += 1
                    if failures > retries:
                        raise CopyError(
                            f"Could not send {relpath} to the console after {retries + 1} attempts ({error}); what "
                            "it holds is kept and the next attempt resumes there. Check that this host reaches "
                            "CONSOLE_INTERNAL_URL."
                        ) from None
                    time.sleep(backoff * 2 ** (failures - 1))
            log(f"{relpath}: {size} bytes at the console.")
            done += size
            progress(done, relpath)
    return sent


class _Retry(Exception):
    pass


def _refused(response: requests.Response, relpath: str) -> None:
    if response.status_code >= 500 or response.status_code in (416, 429):
        raise _Retry(f"the console answered {response.status_code}")
    raise CopyError(f"The console refused {relpath} ({response.status_code}): {_detail(response)}")


def _send_rest(session, url: str, path: Path, offset: int, size: int, piece_bytes: int, cancelled) -> int:
    sent = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        while offset < size or size == 0:
            if cancelled():
                raise CopyError("The copy was cancelled.")
            piece = handle.read(piece_bytes)
            end = offset + len(piece) - 1
            answer = session.put(
                url,
                data=piece,
                headers={"Content-Range": f"bytes {offset}-{end}/{size}", "Content-Type": "application/octet-stream"},
                timeout=TIMEOUT,
            )
            if answer.status_code != 200:
                _refused(answer, path.name)
            offset += len(piece)
            sent += len(piece)
            if size == 0:
                break
    return sent


def receive_files(
    base: str,
    copy_id: int,
    token: str,
    files: dict[str, str],
    dest: Path,
    *,
    wait_s: float = 3600.0,
    poll_s: float = WAIT_POLL_S,
    log: Callable[[str], None] = lambda text: None,
    cancelled: Callable[[], bool] = lambda: False,
    progress: Callable[[int, str], None] = lambda done, name: None,
) -> int:
    """Fetch every file of `files` ({relpath: sha256}) from the console into `dest`, each verified; waits up to
    `wait_s` for a file the sending host has not delivered yet. Returns the bytes now in `dest`."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {token}", "X-Copy-Role": "receive"})
    total = 0
    with session:
        for relpath in sorted(files):
            target = confined(dest, relpath)
            url = file_url(base, copy_id, relpath)
            size = _wait_for(session, url, relpath, wait_s, poll_s, log, cancelled)
            try:
                fetch_file(url, token, sha256=files[relpath], size=size, dest=target, log=log)
            except DatasetFetchError as error:
                raise CopyError(f"{relpath}: {error}") from None
            (target.with_name(target.name + ".lock")).unlink(missing_ok=True)
            total += size
            progress(total, relpath)
        session.post(f"{base.rstrip('/')}/internal/models/copies/{copy_id}/done", timeout=TIMEOUT)
    return total


def _wait_for(session, url: str, relpath: str, wait_s: float, poll_s: float, log, cancelled) -> int:
    """The file's size once the console holds it whole."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        if cancelled():
            raise CopyError("The copy was cancelled.")
        try:
            head = session.head(url, timeout=TIMEOUT)
        except requests.RequestException as error:
            head, reason = None, str(error)
        if head is not None and head.status_code == 200:
            return int(head.headers["Content-Length"])
        if head is not None and head.status_code not in (409, 429) and head.status_code < 500:
            raise CopyError(f"The console refused {relpath} ({head.status_code}): {_detail(head)}")
        if head is not None:
            reason = _detail(head)
        if not said:
            log(f"{relpath}: waiting for the sending host ({reason}).")
            said = True
        if time.monotonic() > deadline:
            raise CopyError(f"{relpath} did not reach the console within {wait_s:.0f} s ({reason}).")
        time.sleep(poll_s)
