"""Issue 22, Deliver 1 and 3 (`make bundle-check`): `make bundle` (the CPU variant: wheels of both environments, the
seven images, the compose and monitoring files, install.sh, SHA256SUMS and the tarball), then the tarball unpacked
elsewhere and its install.sh run by scripts/bundle_offline_check.sh in a network namespace with no route out, under
a dockerd of its own, with an nftables counter on every packet addressed anywhere but the stack. The bundle's size,
its build time and the offline install's time go to test-artifacts/bundle/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.compose_stack import BUNDLE_CACHE, ROOT

# GB-sized (a 3.7 GB bundle written, unpacked and loaded): `make bundle-check`, not `make test`.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.bundle]

ARTIFACTS = ROOT / "test-artifacts" / "bundle"
IMAGES = (
    "llmdeploy-base",
    "llmdeploy-postgres",
    "llmdeploy-redis",
    "llmdeploy-proxy",
    "llmdeploy-console",
    "llmdeploy-prometheus",
    "llmdeploy/ml",
)


def need_root_and_tools() -> None:
    """Fails loudly (never skips): CI runs as root and installs every tool."""
    assert os.geteuid() == 0, "the offline proof makes a network namespace and a dockerd: it needs root"
    for tool in ("docker", "dockerd", "docker-compose", "debootstrap", "nft", "ip", "nsenter", "curl", "tar"):
        found = shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()
        assert found, f"{tool} is not installed (.ci/run installs it)"


def run(cmd: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    output = f"{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"{cmd[0]} exited {result.returncode}:\n{output}"
    return result


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def test_make_bundle_then_install_it_with_no_network(tmp_path):
    need_root_and_tools()
    out = tmp_path / "out"
    started = time.monotonic()
    built = run(
        ["bash", str(ROOT / "scripts" / "bundle.sh"), str(out)],
        timeout=2400,
        env={**os.environ, "PYTHON": sys.executable, "BUNDLE_CACHE": str(BUNDLE_CACHE)},
    )
    build_s = time.monotonic() - started
    (tarball,) = out.glob("llmdeploy-bundle-*.tar")
    directory = out / tarball.stem
    commit = run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], timeout=30).stdout.strip()
    assert tarball.stem.startswith(f"llmdeploy-bundle-{commit[:12]}")

    # What a user copies to the site: the tarball and its sum. Check the sum, unpack it elsewhere, drop the build.
    run(["sha256sum", "--check", "--strict", tarball.name + ".sha256"], timeout=600, cwd=out)
    site = tmp_path / "site"
    site.mkdir()
    run(["tar", "-C", str(site), "-xf", str(tarball)], timeout=600)
    bundle = site / tarball.stem
    sizes = {
        "tarball": tarball.stat().st_size,
        "wheels": size(bundle / "wheels"),
        "images": size(bundle / "images"),
    }
    if (bundle / "debs").is_dir():
        sizes["debs"] = size(bundle / "debs")
    shutil.rmtree(directory)
    tarball.unlink()

    manifest = (bundle / "MANIFEST").read_text()
    assert f"commit: {commit}" in manifest
    for image in IMAGES:
        assert re.search(rf"^image: {re.escape(image)}:\S+ sha256:[0-9a-f]{{64}}$", manifest, re.M), manifest
    # Each image's Debian packages, exactly: what an auditor or a rebuild without a snapshot needs.
    for image in IMAGES:
        packages = dict(
            line.split(" ", 1)
            for line in (bundle / "debian" / f"{image.replace('/', '-')}.packages").read_text().splitlines()
        )
        assert packages.get("dpkg") and packages.get("base-files"), image
    assert "python3.11" in (bundle / "debian" / "llmdeploy-console.packages").read_text()
    for env in ("console", "ml"):
        lock = (bundle / "python" / f"{env}.lock.txt").read_text().split()
        wheels = list((bundle / "wheels" / env).glob("*.whl"))
        assert lock and len(wheels) == len(lock), f"{env}: {len(wheels)} wheels for {len(lock)} pins"
    # Every file but SHA256SUMS itself is listed, so a damaged or added file stops install.sh.
    listed = {line.split(None, 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()}
    present = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert listed == present

    started = time.monotonic()
    offline = run(["bash", str(ROOT / "scripts" / "bundle_offline_check.sh"), str(bundle)], timeout=1200)
    offline_s = time.monotonic() - started
    report = offline.stdout
    assert "login page over HTTPS inside the namespace: 200" in report, report
    assert "packets to anything but the stack: 0 " in report, report
    install_s = int(re.search(r"install took (\d+) s", report).group(1))

    figures = {
        "bundle": tarball.name,
        "bytes": sizes,
        "build_seconds": round(build_s, 1),
        "offline_install_seconds": install_s,
        "offline_check_seconds": round(offline_s, 1),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "bundle.json").write_text(json.dumps(figures, indent=2) + "\n")
    (ARTIFACTS / "build.log").write_text(built.stdout + built.stderr)
    (ARTIFACTS / "offline-check.log").write_text(report + offline.stderr)
    mib = {k: f"{v / 2**20:,.0f} MiB" for k, v in sizes.items()}
    print(f"bundle {tarball.name}: {mib}; built in {build_s:.0f} s; offline install {install_s} s")
