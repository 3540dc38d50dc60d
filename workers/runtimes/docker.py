"""The docker runtime: a TGI (or serve.py) server as a hardened container on a GPU host.

Hardening (docs/operations.md, "Hardening"): read-only root with a tmpfs /tmp, cap-drop ALL,
no-new-privileges, pid (and optional memory) limits, the image's own user, the port published on one address,
no privileged mode, no host network, no Docker socket. Nothing is mounted but the model's directory and its
adapters' directories (read-only, each at its place under /data, never the whole store) and the secret files
(read-only under /run/secrets): a token reaches the server as a file whose path is in the environment, never as
an environment value that `docker inspect` would show. Images are never pulled: a missing image is an error the
operator fixes on the host.
"""

from __future__ import annotations

import calendar
import contextlib
import io
import logging
import math
import os
import re
import shutil
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import docker
import requests

from workers.runtimes.base import ENV_NAME, Handle, RunSpec, RuntimeFailure, Status, secret_env_loader, traced

logger = logging.getLogger(__name__)

CONTAINER_MODEL_STORE = (
    "/data"  # as deployments.backends.tgi.launch.CONTAINER_MODEL_STORE: launcher args name paths under it
)
SECRETS_IN_CONTAINER = "/run/secrets"
PIDS_LIMIT = 4096  # TGI runs a launcher, a router and one shard per GPU, each with thread pools
# exec stays allowed: torch and triton load the kernels they compile from files under /tmp.
TMPFS_OPTIONS = "rw,nosuid,nodev"
LOG_OVERLAP_SECONDS = 2  # re-read window of incremental log reads; covers stdout/stderr interleaving
CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")  # docker's own rule; also a safe directory name
SHELL = "/bin/sh"  # the images' own (TGI's is Ubuntu; the ML image Debian)
# A daemon that is down or unreachable raises requests' errors, not the SDK's.
UNREACHABLE = (docker.errors.DockerException, requests.RequestException)


# -- the invocation ----------------------------------------------------------------------------------------
def secret_target(env_name: str) -> str:
    """Where the secret named by env var `env_name` appears inside the container."""
    if not ENV_NAME.fullmatch(env_name):
        raise RuntimeFailure(f"{env_name!r} is not an environment variable name", cause="config")
    return f"{SECRETS_IN_CONTAINER}/{env_name.lower()}"


def secret_env_target(env_name: str) -> str:
    """Where the file holding the value of variable `env_name` (RunSpec.secret_env) appears in the container."""
    if not ENV_NAME.fullmatch(env_name):
        raise RuntimeFailure(f"{env_name!r} is not an environment variable name", cause="config")
    return f"{SECRETS_IN_CONTAINER}/env-{env_name.lower()}"


def _read_only(source: str | Path, target: str) -> docker.types.Mount:
    return docker.types.Mount(target=target, source=str(source), type="bind", read_only=True)


def model_mounts(spec: RunSpec) -> list[docker.types.Mount]:
    """The model's directory and its adapters' directories, read-only, each where the launcher's arguments name it
    under /data; never the whole store, so a server reads only what it serves. An adapter outside the store is not
    mounted (spec checks keep adapters in the store; the server then reports it missing, by name)."""
    store = PurePosixPath(os.path.normpath(spec.model_store))

    def in_container(path: str) -> str | None:
        try:
            relative = PurePosixPath(os.path.normpath(path)).relative_to(store)
        except ValueError:
            return None
        return str(PurePosixPath(CONTAINER_MODEL_STORE) / relative) if relative.parts else None

    model = in_container(spec.model_dir)
    if model is None:
        raise RuntimeFailure(
            f"{spec.model_dir} is not a model directory inside the host's model store {spec.model_store}",
            cause="config",
        )
    mounts, seen = [_read_only(spec.model_dir, model)], {model}
    for adapter in spec.adapter_dirs:
        target = in_container(adapter)
        if target is not None and target not in seen:
            mounts.append(_read_only(os.path.normpath(adapter), target))
            seen.add(target)
    return mounts


def container_kwargs(
    spec: RunSpec,
    *,
    secret_paths: dict[str, str] | None = None,
    secret_env_paths: dict[str, str] | None = None,
    entrypoint: list[str] | None = None,
    extra_mounts: list[str] | tuple[str, ...] = (),
    working_dir: str | None = None,
) -> tuple[dict, dict]:
    """(create_container kwargs, create_host_config kwargs) for a spec: the whole invocation in one place,
    so tests can check it without a daemon or a GPU. `secret_paths` maps env var names to host files;
    `secret_env_paths` maps the variables of spec.secret_env to the host files holding their values, loaded by
    a wrapper around the image's `entrypoint`."""
    env = dict(spec.env)  # explicit: nothing from the worker's own environment
    mounts = model_mounts(spec)
    for env_name, host_file in sorted((secret_paths or {}).items()):
        mounts.append(_read_only(host_file, secret_target(env_name)))
        env[env_name] = secret_target(env_name)  # the path only; the value stays out of `docker inspect`
    loaded = {}
    for env_name, host_file in sorted((secret_env_paths or {}).items()):
        mounts.append(_read_only(host_file, secret_env_target(env_name)))
        loaded[env_name] = secret_env_target(env_name)
    for entry in extra_mounts:  # test-only (DOCKER_TEST_EXTRA_MOUNTS); start() refuses them in production
        source, _, target = entry.partition(":")
        mounts.append(_read_only(source, target or source))
    devices = None
    if spec.gpu_indexes:
        devices = [docker.types.DeviceRequest(device_ids=[str(i) for i in spec.gpu_indexes], capabilities=[["gpu"]])]
    host = {
        "mounts": mounts,
        "tmpfs": {"/tmp": TMPFS_OPTIONS},  # noqa: S108
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": PIDS_LIMIT,
        "shm_size": spec.shm_size,
        "privileged": False,
        "network_mode": "bridge",
        "device_requests": devices,
        # None lets docker pick a free host port; start() reads it back.
        "port_bindings": {spec.container_port: (spec.bind_address, spec.port or None)},
    }
    if spec.memory_limit:
        host["mem_limit"] = spec.memory_limit
        host["memswap_limit"] = spec.memory_limit  # no swap: a swapping server only looks alive
    create = {
        "image": spec.image,
        "name": spec.name,
        "command": list(spec.args),
        "environment": env,
        "labels": dict(spec.labels),
        "ports": [spec.container_port],
        "detach": True,
        "stop_timeout": math.ceil(spec.stop_grace),
    }
    if working_dir:
        create["working_dir"] = working_dir
    if loaded:
        # The wrapper names file paths only; the image's entrypoint then runs with the variables set.
        script = secret_env_loader(loaded) + '; exec "$@"'
        create["entrypoint"] = [SHELL, "-c", script, "sh", *(entrypoint or [])]
    return create, host


# -- secret files ------------------------------------------------------------------------------------------
def secrets_dir(name: str) -> Path:
    from django.conf import settings

    if not CONTAINER_NAME.fullmatch(name):  # the name becomes a path that remove() deletes
        raise RuntimeFailure(f"{name!r} is not a valid container name", cause="config")
    return Path(settings.DATA_DIR) / "runtimes" / "secrets" / name


def write_secrets(directory: Path, secret_files: dict[str, str], *, target=secret_target) -> dict[str, str]:
    """One 0600 file per secret in a 0700 directory; returns env var name -> host path."""
    if not secret_files:
        return {}
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for parent in (directory, directory.parent, directory.parent.parent):
        parent.chmod(0o700)
    paths = {}
    for env_name, content in secret_files.items():
        path = directory / Path(target(env_name)).name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        paths[env_name] = str(path)
    return paths


def hand_over_secrets(paths: dict[str, str], uid: int | None) -> None:
    """Make the files readable by the container's user, who has no capabilities (so no DAC override)."""
    for path in paths.values():
        if uid == os.geteuid():
            continue
        try:
            if uid is None:
                raise PermissionError
            os.chown(path, uid, -1)  # a root worker: the container's user owns its copy, still 0600
        except PermissionError:
            # Not root (or an unknown user): the 0700 directory still keeps other host users out.
            os.chmod(path, 0o644)


# -- reading container state -------------------------------------------------------------------------------
def _published(attrs: dict) -> tuple[str, int]:
    """(host address, host port) of the container's first published TCP port."""
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    for table in (ports, bindings):  # the live table once running; the requested one after exit
        for key, entries in sorted(table.items()):
            if key.endswith("/tcp") and entries:
                address = entries[0].get("HostIp") or ""
                port = int(entries[0].get("HostPort") or 0)
                if port or table is bindings:
                    return address, port
    return "", 0


def _command(config: dict) -> list[str]:
    """The image's entrypoint and the arguments, without the wrapper that loads secret variables."""
    entrypoint = list(config.get("Entrypoint") or [])
    if entrypoint[:2] == [SHELL, "-c"] and len(entrypoint) >= 4 and entrypoint[3] == "sh":
        entrypoint = entrypoint[4:]
    return entrypoint + list(config.get("Cmd") or [])


def handle_from_attrs(attrs: dict) -> Handle:
    address, port = _published(attrs)
    host = address if address not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104 - read, not bound
    host = f"[{host}]" if ":" in host else host
    return Handle(
        runtime="docker",
        ref=attrs["Id"],
        name=attrs["Name"].lstrip("/"),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        port=port,
        endpoint=f"http://{host}:{port}",
        command=_command(attrs.get("Config") or {}),
    )


def status_from_attrs(attrs: dict) -> Status:
    state = attrs.get("State") or {}
    if state.get("Running"):
        return Status("running", detail="paused" if state.get("Paused") else "")
    never_started = state.get("Status") == "created"
    code = None if never_started else state.get("ExitCode")
    return Status(
        "exited",
        exit_code=code,
        oom_killed=bool(state.get("OOMKilled")),
        detail=state.get("Error") or state.get("Status") or "",
    )


# -- logs --------------------------------------------------------------------------------------------------
def _timestamp_ns(stamp: str) -> int:
    """Docker's RFC 3339 UTC timestamp ("2024-05-01T10:00:00.123456789Z") as integer nanoseconds."""
    if not stamp.endswith("Z") or len(stamp) < 20:
        raise ValueError(stamp)
    whole, _, fraction = stamp[:-1].partition(".")
    seconds = calendar.timegm(
        (
            int(whole[0:4]),
            int(whole[5:7]),
            int(whole[8:10]),
            int(whole[11:13]),
            int(whole[14:16]),
            int(whole[17:19]),
            0,
            0,
            0,
        )
    )
    return seconds * 10**9 + int((fraction or "0")[:9].ljust(9, "0"))


@dataclass
class _LogTail:
    """What one worker remembers of a container's log, so that the next read asks docker only for the last
    few seconds: `recent` are the returned lines dated at or after `since` (seconds), in order."""

    count: int
    since: int
    recent: list[tuple[int, str]]


_TAILS: OrderedDict[str, _LogTail] = OrderedDict()
_TAILS_LOCK = threading.Lock()
_TAILS_MAX = 512


def _remember(ref: str, count: int, returned: list[tuple[int, str]]) -> None:
    """`returned` must hold every returned line dated within the overlap window (all of them is fine)."""
    if not returned or any(stamp == 0 for stamp, _ in returned):  # undated lines: no window to ask for
        _forget(ref)
        return
    newest = max(stamp for stamp, _ in returned)
    since = max(1, newest // 10**9 - LOG_OVERLAP_SECONDS)
    recent = [line for line in returned if line[0] >= since * 10**9]
    with _TAILS_LOCK:
        _TAILS[ref] = _LogTail(count, since, recent)
        _TAILS.move_to_end(ref)
        while len(_TAILS) > _TAILS_MAX:
            _TAILS.popitem(last=False)


def _forget(ref: str) -> None:
    with _TAILS_LOCK:
        _TAILS.pop(ref, None)


# -- the runtime -------------------------------------------------------------------------------------------
class DockerRuntime:
    """Servers as containers of this host's dockerd (see the module docstring for the hardening)."""

    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self._client = client

    @property
    def api(self) -> docker.APIClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=60)
            except docker.errors.DockerException as exc:
                raise RuntimeFailure(f"dockerd does not answer: {exc}", cause="docker_unavailable") from exc
        return self._client.api

    @traced("start")
    def start(self, spec: RunSpec) -> Handle:
        from django.conf import settings

        if spec.program:
            # Job programs need the host's checkpoint and dataset cache directories writable; this runtime mounts
            # only the model store, read-only. They run on process-runtime hosts for now.
            raise RuntimeFailure(
                "Job programs (fine-tune, merge, statistics) run on hosts with the process runtime; this host runs "
                "docker.",
                cause="runtime_unsupported",
            )
        extra = list(getattr(settings, "DOCKER_TEST_EXTRA_MOUNTS", []) or [])
        if extra and not getattr(settings, "CONSOLE_TESTING", False):
            raise RuntimeFailure(
                "DOCKER_TEST_EXTRA_MOUNTS is set but CONSOLE_TESTING is not: host mounts for test "
                "images are refused outside the test suite",
                cause="config",
            )
        if not spec.image:
            raise RuntimeFailure(f"no image given for {spec.name}", cause="config")
        image = self._image(spec.image)
        run_as = self._pinned(image, spec)
        if self._exists(spec.name):
            raise RuntimeFailure(
                f"a container named {spec.name} already exists on this host (find and remove it first)",
                cause="name_conflict",
            )
        directory = secrets_dir(spec.name)
        shutil.rmtree(directory, ignore_errors=True)  # left by a container removed behind our back; unused now
        try:
            secret_paths = write_secrets(directory, spec.secret_files)
            secret_env_paths = write_secrets(directory, spec.secret_env, target=secret_env_target)
        except OSError as exc:
            raise RuntimeFailure(f"could not write the secret files of {spec.name}: {exc}", cause="secrets") from exc
        config = image.get("Config") or {}
        # A read-only root needs a writable working directory; an image's own WORKDIR (TGI keeps its venv
        # there) is left alone.
        working_dir = None if (config.get("WorkingDir") or "/") != "/" else "/tmp"  # noqa: S108
        create, host = container_kwargs(
            spec,
            secret_paths=secret_paths,
            secret_env_paths=secret_env_paths,
            entrypoint=config.get("Entrypoint") or [],
            extra_mounts=extra,
            working_dir=working_dir,
        )
        create["image"] = run_as
        try:
            container_id = self.api.create_container(**create, host_config=self.api.create_host_config(**host))["Id"]
        except UNREACHABLE as exc:
            if isinstance(exc, docker.errors.APIError) and exc.status_code == 409:
                # The secrets directory may belong to that container: leave it.
                raise RuntimeFailure(
                    f"a container named {spec.name} already exists on this host", cause="name_conflict"
                ) from exc
            shutil.rmtree(directory, ignore_errors=True)
            raise RuntimeFailure(
                f"docker refused to create {spec.name}: {getattr(exc, 'explanation', None) or exc}",
                cause="create_failed",
            ) from exc
        try:
            uid = self._container_uid(container_id, config.get("User") or "")
            hand_over_secrets({**secret_paths, **secret_env_paths}, uid)
            self.api.start(container_id)
            attrs = self.api.inspect_container(container_id)
        except (*UNREACHABLE, OSError) as exc:
            with contextlib.suppress(*UNREACHABLE):
                self._discard(container_id, spec.name)
            explanation = getattr(exc, "explanation", None) or exc
            raise RuntimeFailure(f"docker could not start {spec.name}: {explanation}", cause="start_failed") from exc
        return handle_from_attrs(attrs)

    def status(self, handle: Handle) -> Status:
        try:
            return status_from_attrs(self.api.inspect_container(handle.ref))
        except docker.errors.NotFound:
            return Status("missing", detail=f"container {handle.name} is gone")
        except UNREACHABLE as exc:  # not "missing": the caller must not restart blindly
            raise RuntimeFailure(f"dockerd does not answer: {exc}", cause="docker_unavailable") from exc

    def logs(self, handle: Handle, since: int) -> tuple[list[str], int]:
        """The cursor is the number of log lines (docker messages, stdout and stderr in docker's order)
        already returned. A worker that read this container before asks docker only for the last few
        seconds and skips the overlap it remembers; a fresh worker reads the whole log once."""
        with _TAILS_LOCK:
            tail = _TAILS.get(handle.ref)
        if tail is not None and tail.count == since > 0:
            fetched = self._lines(handle.ref, tail.since)
            if fetched is None:
                return [], since
            overlap = len(tail.recent)
            if fetched[:overlap] == tail.recent:  # docker's order is stable, so the overlap comes first
                new = fetched[overlap:]
                _remember(handle.ref, since + len(new), tail.recent + new)
                return [text for _, text in new], since + len(new)
        # First read by this worker, or the remembered overlap no longer matches: the whole log, once.
        everything = self._lines(handle.ref, None)
        if everything is None:
            return [], since
        new = everything[since:]
        if since + len(new) == len(everything):
            _remember(handle.ref, len(everything), everything)
        return [text for _, text in new], since + len(new)

    @traced("stop")
    def stop(self, handle: Handle, grace: float) -> Status:
        try:
            # Docker sends the image's STOPSIGNAL (SIGTERM), waits `grace`, then SIGKILLs.
            self.api.stop(handle.ref, timeout=math.ceil(grace))
        except docker.errors.NotFound:
            return Status("missing", detail=f"container {handle.name} is gone")
        except UNREACHABLE as exc:
            raise RuntimeFailure(f"docker could not stop {handle.name}: {exc}", cause="docker_unavailable") from exc
        return self.status(handle)

    def remove(self, handle: Handle) -> None:
        try:
            self._discard(handle.ref, handle.name)
        except UNREACHABLE as exc:
            raise RuntimeFailure(f"docker could not remove {handle.name}: {exc}", cause="docker_unavailable") from exc

    def find(self, labels: dict[str, str]) -> list[Handle]:
        filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
        handles = []
        try:
            for summary in self.api.containers(all=True, filters=filters):
                try:
                    handles.append(handle_from_attrs(self.api.inspect_container(summary["Id"])))
                except docker.errors.NotFound:  # removed meanwhile
                    continue
        except UNREACHABLE as exc:
            raise RuntimeFailure(f"dockerd does not answer: {exc}", cause="docker_unavailable") from exc
        return handles

    # -- helpers ---------------------------------------------------------------------------------------
    def _image(self, image: str) -> dict:
        try:
            return self.api.inspect_image(image)
        except docker.errors.ImageNotFound as exc:
            raise RuntimeFailure(
                f"image {image} is not present on host; load it there (docker load or pull by "
                "an operator): the console never pulls images",
                cause="image_missing",
            ) from exc
        except UNREACHABLE as exc:
            raise RuntimeFailure(f"dockerd does not answer: {exc}", cause="docker_unavailable") from exc

    @staticmethod
    def _pinned(image: dict, spec: RunSpec) -> str:
        """What the container runs: the image id when the spec pins a digest the local image has, the reference
        otherwise; a mismatch is refused (the host holds another build under that tag)."""
        if not spec.image_digest:
            return spec.image
        digests = {image.get("Id", "")} | {d.split("@", 1)[1] for d in image.get("RepoDigests") or [] if "@" in d}
        if spec.image_digest not in digests:
            raise RuntimeFailure(
                f"the image {spec.image} on this host is not the allowed digest {spec.image_digest} "
                f"(it is {image.get('Id', 'unknown')})",
                cause="image_digest_mismatch",
            )
        return image["Id"]

    def _exists(self, name: str) -> bool:
        try:
            self.api.inspect_container(name)
        except docker.errors.NotFound:
            return False
        except UNREACHABLE as exc:
            raise RuntimeFailure(f"dockerd does not answer: {exc}", cause="docker_unavailable") from exc
        return True

    def _container_uid(self, container_id: str, user: str) -> int | None:
        """Numeric uid of the image's USER ("" is root); a name is looked up in the image's /etc/passwd."""
        name = user.split(":", 1)[0]
        if name in ("", "root"):
            return 0
        if name.isdigit():
            return int(name)
        try:
            stream, _ = self.api.get_archive(container_id, "/etc/passwd")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                member = archive.extractfile(archive.getmembers()[0])
                for line in member.read().decode(errors="replace").splitlines():
                    fields = line.split(":")
                    if len(fields) > 2 and fields[0] == name:
                        return int(fields[2])
        except (*UNREACHABLE, tarfile.TarError, IndexError, ValueError, AttributeError):
            logger.warning("could not resolve user %s of container %s", name, container_id)
        return None

    def _discard(self, ref: str, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(ref, force=True)
        shutil.rmtree(secrets_dir(name), ignore_errors=True)
        _forget(ref)

    def _lines(self, ref: str, since: int | None) -> list[tuple[int, str]] | None:
        """(timestamp ns, text) per log message, in docker's order; None when the container is gone."""
        try:
            frames = self.api.logs(
                ref, stdout=True, stderr=True, timestamps=True, stream=True, follow=False, since=since
            )
            lines = []
            for frame in frames:  # one frame per message (containers run without a TTY)
                stamp, _, text = frame.decode("utf-8", "replace").partition(" ")
                text = text[:-1] if text.endswith("\n") else text
                try:
                    lines.append((_timestamp_ns(stamp), text))
                except ValueError:
                    lines.append((0, text))
            return lines
        except docker.errors.NotFound:
            return None
        except UNREACHABLE as exc:
            raise RuntimeFailure(f"dockerd does not answer: {exc}", cause="docker_unavailable") from exc
