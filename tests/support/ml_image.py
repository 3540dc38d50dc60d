"""The ML image for docker tests, built here without pulling anything: a near-empty root filesystem imported with
`docker import` that has the ML image's layout (the `text-generation-launcher` and `vllm` shims in /usr/local/bin,
user 1000, ML_PYTHON), the host's system libraries, Python, ML venv and workers package bind-mounted read-only at
run time; and `llmdeploy-vllm-test`, derived from it with ENTRYPOINT ["vllm", "serve"] as vLLM's OpenAI server
image has, so `docker run llmdeploy-vllm-test <model> --flags` is `vllm serve <model> --flags`."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker

from tests.conftest import need
from tests.support.serve_process import ROOT, make_model, ml_python

SHIMS = ("text-generation-launcher", "vllm")  # deploy/ml/<name> -> /usr/local/bin/<name>
LAUNCHER = "/usr/local/bin/text-generation-launcher"  # the ML image's entrypoint
VLLM_IMAGE = "llmdeploy-vllm-test:dev"


def host_mounts() -> list[str]:
    """What the near-empty image borrows from the host, read-only (`source:target`): system libraries (all of /usr
    but /usr/local, where the image keeps its shims), the Python the ML venv was made from, the venv, and the
    project's workers package."""
    mounts = [f"/usr/{entry}:/usr/{entry}" for entry in sorted(os.listdir("/usr")) if entry != "local"]
    mounts += [
        f"{top}:{top}" for top in ("/bin", "/sbin", "/lib", "/lib64") if os.path.isdir(top) and not os.path.islink(top)
    ]  # symlinks are copied into the image
    python = Path(ml_python())
    interpreter = Path(os.path.realpath(python))
    prefix = interpreter.parents[1]  # e.g. /root/.pyenv/versions/3.11.7
    if prefix == Path("/usr/local"):  # not all of it: the image keeps its shims in /usr/local/bin
        mounts += ["/usr/local/lib:/usr/local/lib", f"{interpreter}:{interpreter}"]
    elif prefix != Path("/usr"):  # a system Python is in the /usr mounts already
        mounts.append(f"{prefix}:{prefix}")
    for path in (python.parents[1], ROOT / "workers"):  # the ML venv, the project's code
        mounts.append(f"{path}:{path}")
    return mounts


def read_only_mounts(extra: dict[str, str] | None = None) -> list[docker.types.Mount]:
    """host_mounts() and `extra` (target -> source) as read-only bind mounts."""
    pairs = [entry.split(":", 1)[::-1] for entry in host_mounts()] + list((extra or {}).items())
    return [docker.types.Mount(target, source, type="bind", read_only=True) for target, source in pairs]


def rootfs_tar() -> bytes:
    """A root filesystem with only the shims, users, and empty mount points."""
    buffer = io.BytesIO()

    def add_dir(archive: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        archive.addfile(info)

    def add_file(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        archive.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in ("usr", "usr/local", "usr/local/bin", "etc", "data", "root", "run", "work"):
            add_dir(archive, name)
        add_dir(archive, "tmp", 0o1777)
        for top in ("bin", "sbin", "lib", "lib64"):
            if os.path.islink(f"/{top}"):  # merged-/usr hosts: /bin -> usr/bin and so on
                info = tarfile.TarInfo(top)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(f"/{top}")
                archive.addfile(info)
        for shim in SHIMS:
            add_file(archive, f"usr/local/bin/{shim}", (ROOT / "deploy" / "ml" / shim).read_bytes(), 0o755)
        add_file(archive, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nserve:x:1000:1000::/tmp:/bin/sh\n")
        add_file(archive, "etc/group", b"root:x:0:\nserve:x:1000:\n")
    return buffer.getvalue()


def import_ml_image(client: docker.DockerClient, image: str) -> str:
    """The ML image's layout under the name `image` (repository:tag): entrypoint text-generation-launcher."""
    repository, tag = image.split(":")
    client.api.import_image_from_data(
        rootfs_tar(),
        repository=repository,
        tag=tag,
        changes=[
            f'ENTRYPOINT ["{LAUNCHER}"]',
            f"ENV ML_PYTHON={ml_python()}",
            f"ENV PYTHONPATH={ROOT}",
            "ENV PATH=/usr/local/bin:/usr/bin:/bin",
            "ENV PYTHONUNBUFFERED=1",
            "ENV PYTHONDONTWRITEBYTECODE=1",
            "ENV HF_HOME=/data",
            "ENV HF_HUB_OFFLINE=1",
            "ENV PORT=80",
            "USER 1000",
            "WORKDIR /tmp",
        ],
    )
    return image


def build_vllm_image(client: docker.DockerClient, base: str, image: str = VLLM_IMAGE) -> str:
    """`image` derived from the test ML image `base` as vLLM's server image is laid out: `vllm serve` as its
    entrypoint, port 8000. Built from the local base only (nothing is pulled)."""
    dockerfile = f'FROM {base}\nENTRYPOINT ["/usr/local/bin/vllm", "serve"]\nEXPOSE 8000\n'.encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        archive.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=image, pull=False, rm=True, forcerm=True)
    return image


def docker_client() -> docker.DockerClient:
    """A client of the local dockerd (a skip outside CI, a failure in CI, when there is none)."""
    try:
        found = docker.from_env(timeout=60)
        found.ping()
    except docker.errors.DockerException:
        found = None
    need(found is not None, "a running dockerd (apt-get install -y docker.io, then start dockerd as root)")
    return found


def vllm_image(client: docker.DockerClient, base: str) -> Iterator[str]:
    """A module fixture's body: VLLM_IMAGE built on a fresh ML image named `base`, both removed afterwards."""
    need(ml_python() is not None, "the ML environment (make ml-env) to run vllm_serve.py in the container")
    build_vllm_image(client, import_ml_image(client, base))
    yield VLLM_IMAGE
    for name in (VLLM_IMAGE, base):  # each run builds anew; keep no dangling copies
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_image(name, force=True)


def tiny_model_store(tmp_path_factory) -> Path:
    """A model store holding the tiny model as `tiny`, readable by the image's user 1000 through the bind mount."""
    need(ml_python() is not None, "the ML environment (make ml-env) to make the tiny model")
    store = tmp_path_factory.mktemp("store")
    store.chmod(0o755)
    make_model(store / "tiny")
    for path in (store / "tiny").iterdir():
        path.chmod(0o644)  # safetensors writes 0600; the image's user 1000 is not the owner
    return store
