"""Issue 22, Deliver 1: the bundle's debs/ (scripts/bundle_debs.sh) install the Docker engine, docker-compose and
openssl on a minimal Debian with no network, through install.sh itself. In a container of the bundle's own base, cut
down to Essential + apt and started with `--network none`, install.sh verifies the checksums (an altered .deb stops it
before anything is installed), installs what is missing from debs/, and `docker --version` and `docker-compose
version` run; a second run finds them and installs nothing. The daemon is not started (that needs a privileged
container).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy.compose_stack import ROOT, run

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ARTIFACTS = ROOT / "test-artifacts" / "bundle"
WANTED = {"docker.io", "docker-compose", "openssl"}

# Runs inside the offline container; /bundle is the bundle, read-only.
IN_CONTAINER = r"""
set -u
# A minimal Debian, as bundle_debs.sh computes the closure over: Essential packages and apt (removals need no network).
apt-mark auto $(dpkg-query -W -f '${Package}\n') >/dev/null
apt-mark manual apt >/dev/null
apt-get autoremove --purge -y -o APT::AutoRemove::RecommendsImportant=false >/dev/null 2>&1
for tool in docker docker-compose openssl; do command -v $tool >/dev/null && echo "PRESENT-BEFORE $tool"; done

echo "== altered"
cp -a /bundle /tmp/altered
deb=$(ls /tmp/altered/debs/docker.io_*.deb)
echo x >>"$deb"
/tmp/altered/install.sh; echo "rc=$?"
command -v docker >/dev/null && echo "INSTALLED-FROM-ALTERED"

echo "== first"
start=$(date +%s)
/bundle/install.sh; echo "rc=$?"
echo "install_s=$(( $(date +%s) - start ))"
docker --version
docker-compose version --short
openssl version
dpkg-query -W -f '${Package} ${Version}\n' | sort >/tmp/after-first

echo "== second"
/bundle/install.sh; echo "rc=$?"
dpkg-query -W -f '${Package} ${Version}\n' | sort | cmp -s - /tmp/after-first && echo "UNCHANGED"
"""


def need_tools() -> None:
    """Fails loudly (never skips) when what the bundle needs is missing: CI installs all of it."""
    for tool in ("docker", "debootstrap"):
        assert shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists(), (
            f"{tool} is not installed (.ci/run installs it)"
        )


def base_image() -> str:
    release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    return f"llmdeploy-base:{release['VERSION_CODENAME'].strip(chr(34))}"


def section(output: str, name: str) -> str:
    return output.split(f"== {name}\n", 1)[1].split("\n== ", 1)[0]


def test_bundle_debs_install_docker_and_compose_offline_on_a_minimal_debian(tmp_path):
    need_tools()
    timings: dict[str, float] = {}
    bundle = tmp_path / "bundle"
    started = time.monotonic()
    run([str(ROOT / "scripts" / "bundle_debs.sh"), str(bundle / "debs"), base_image()])
    timings["bundle_debs"] = time.monotonic() - started

    listing = (bundle / "debs" / "packages.txt").read_text().splitlines()
    assert listing[0].startswith("# debian ")
    packages = {line.split()[0]: line.split()[1] for line in listing[1:]}
    assert packages.keys() >= WANTED
    debs = sorted(path.name for path in (bundle / "debs").glob("*.deb"))
    assert len(debs) == len(packages)
    index = (bundle / "debs" / "Packages").read_text()
    assert all(f"Filename: ./{name}\n" in index for name in debs)

    # The bundle as bundle.sh lays it out: install.sh beside debs/, SHA256SUMS over every other file.
    shutil.copy2(ROOT / "deploy" / "bundle" / "install.sh", bundle / "install.sh")
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    sums = subprocess.run(["sha256sum", *files], cwd=bundle, capture_output=True, text=True, check=True).stdout
    (bundle / "SHA256SUMS").write_text(sums)

    started = time.monotonic()
    docker_run = ["docker", "run", "--rm", "--network", "none", "-v", f"{bundle}:/bundle:ro", base_image()]
    result = subprocess.run(
        [*docker_run, "bash", "-c", IN_CONTAINER],
        capture_output=True,
        text=True,
        timeout=600,
    )
    timings["offline_container"] = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "PRESENT-BEFORE" not in output, output

    altered = section(result.stdout, "altered")
    assert "rc=1" in altered and "INSTALLED-FROM-ALTERED" not in altered, output
    assert "SHA256SUMS does not match" in result.stderr

    first = section(result.stdout, "first")
    assert "installing docker.io docker-compose openssl from the bundle's debs/" in first, output
    assert f"installed: docker.io {packages['docker.io']}" in first, output
    # The engine and compose run; the daemon is not there to answer (install.sh stops at that check).
    assert "Docker version 20.10" in first and "\n1.29.2\n" in first, output
    assert "OpenSSL 3." in first, output
    assert "dockerd does not answer" in result.stderr

    second = section(result.stdout, "second")
    assert "installing" not in second and "UNCHANGED" in second, output

    timings["install_in_container"] = float(first.split("install_s=", 1)[1].split()[0])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "bundle-debs.json").write_text(
        json.dumps(
            {
                "packages": len(packages),
                "megabytes": round(sum(p.stat().st_size for p in (bundle / "debs").glob("*.deb")) / 2**20, 1),
                "seconds": {k: round(v, 1) for k, v in timings.items()},
            },
            indent=2,
        )
    )
    print("bundle debs:", len(packages), "packages; timings (s):", {k: round(v, 1) for k, v in timings.items()})
