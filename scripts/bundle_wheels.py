"""Resolve, pin and download the wheels of one Python environment for the offline bundle.

    python scripts/bundle_wheels.py console OUT_DIR      # the control plane (pyproject.toml's dependencies)
    python scripts/bundle_wheels.py ml OUT_DIR           # the ML environment, CPU build (requirements-ml.txt)
    python scripts/bundle_wheels.py ml-cuda OUT_DIR      # the ML environment's CUDA set: resolved only

Each environment is resolved twice with `pip install --dry-run --ignore-installed --report` (the package indexes
pip is configured with) and the two reports must name the same distributions at the same versions and the same
archive hashes: a resolution that is not reproducible stops the bundle. OUT_DIR then holds
  <env>.report.json   the first resolution report (pip's JSON)
  <env>.lock.txt      name==version of every distribution, sorted: what the wheels and the images install
  wheels/<env>/       the wheels (`pip wheel --no-deps` of the lock; sdists are built with build-constraints.txt)
The CUDA set writes only its report and lock (its wheels are installed on a GPU host from its own index).

Environment markers must be those of the images' interpreter (Debian's python3: bookworm's 3.11.2 needs
async-timeout for redis, 3.11.3 and later do not), so the script runs itself under a virtualenv of
BUNDLE_TARGET_PYTHON (default /usr/bin/python3, this Debian release's own, the same package the images install)
kept in OUT_DIR/resolver-venv, with pip >= 25.3 (build constraints).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "build-constraints.txt"
# The CUDA set: PyPI's own Linux wheels of torch are its CUDA build (with the nvidia-* runtime wheels), so by default
# it is resolved against PyPI alone, ignoring pip.conf (whose local CPU wheel would satisfy torch==X as well).
# TORCH_CUDA_INDEX (e.g. https://download.pytorch.org/whl/cu128) resolves torch==X+<suffix> from PyTorch's index.
CUDA_INDEX = os.environ.get("TORCH_CUDA_INDEX", "")
PYPI = "https://pypi.org/simple"


TARGET_PYTHON = os.environ.get("BUNDLE_TARGET_PYTHON", "/usr/bin/python3")
QUIET_WARNINGS = ("Location 'file:",)  # pip.conf's local indexes: a missing project there is no news


def resolver_python(out: Path) -> Path:
    """The interpreter the resolution runs under: a virtualenv of the images' Python, made once per OUT_DIR."""
    venv = out / "resolver-venv"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        subprocess.run([TARGET_PYTHON, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "pip>=25.3"], check=True)
        (venv / ".ready").write_text(subprocess.check_output([str(python), "--version"], text=True))
    return python


def pip(args: list[str]) -> None:
    """Run pip (this interpreter's), without the noise of the local indexes' missing projects."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_BUILD_CONSTRAINT": str(CONSTRAINTS)}
    result = subprocess.run([sys.executable, "-m", "pip", *args], env=env, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(
        "".join(line for line in result.stderr.splitlines(True) if not any(w in line for w in QUIET_WARNINGS))
    )
    if result.returncode != 0:
        raise SystemExit(f"pip {args[0]} failed ({result.returncode})")


def requirements(env: str) -> list[str]:
    """The top-level requirements of an environment."""
    if env == "console":
        return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (ROOT / "requirements-ml.txt").read_text().splitlines()
    reqs = [line.split("#", 1)[0].strip() for line in lines]
    reqs = [r for r in reqs if r]
    if env == "ml-cuda" and CUDA_INDEX:
        # PyTorch's index names its builds by a local version (+cu128: the index's last path segment).
        suffix = CUDA_INDEX.rstrip("/").rsplit("/", 1)[1]
        reqs = [f"{r}+{suffix}" if r.startswith("torch==") else r for r in reqs]
    return reqs


def resolve(env: str, reqs: list[str], report: Path) -> list[dict]:
    """One resolution: pip's install report for `reqs` (nothing installed)."""
    extra = []
    if env == "ml-cuda":
        extra = ["--isolated", "--index-url", CUDA_INDEX or PYPI, *(["--extra-index-url", PYPI] if CUDA_INDEX else [])]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req_file:
        req_file.write("\n".join(reqs) + "\n")
    try:
        pip(
            [
                "install",
                "--quiet",
                "--dry-run",
                "--ignore-installed",
                "--only-binary",
                ":all:" if env == "ml-cuda" else ":none:",
                "--report",
                str(report),
                "-r",
                req_file.name,
                *extra,
            ]
        )
    finally:
        os.unlink(req_file.name)
    return json.loads(report.read_text())["install"]


def wheel_set(install: list[dict]) -> list[tuple[str, str, str]]:
    """(name, version, archive hash) of every distribution a report installs, sorted."""
    rows = []
    for item in install:
        meta = item["metadata"]
        hashes = item.get("download_info", {}).get("archive_info", {}).get("hashes", {})
        rows.append((meta["name"].lower().replace("_", "-"), meta["version"], hashes.get("sha256", "")))
    return sorted(rows)


def main(env: str, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    python = resolver_python(out)
    if Path(sys.prefix).resolve() != python.parent.parent.resolve():
        # Markers are evaluated by the running interpreter: resolve under the images' Python.
        os.execv(str(python), [str(python), __file__, env, str(out)])  # noqa: S606 (a fixed argv, no shell)
    reqs = requirements(env)
    first = wheel_set(resolve(env, reqs, out / f"{env}.report.json"))
    second_report = out / f"{env}.report-2.json"
    second = wheel_set(resolve(env, reqs, second_report))
    second_report.unlink()
    if first != second:
        differ = sorted(set(first) ^ set(second))
        print(f"{env}: two resolutions differ: {differ}", file=sys.stderr)
        return 1
    lock = out / f"{env}.lock.txt"
    lock.write_text("".join(f"{name}=={version}\n" for name, version, _ in first))
    print(f"{env}: {len(first)} distributions, two resolutions identical -> {lock.name}")
    if env == "ml-cuda":
        return 0
    wheels = out / "wheels" / env
    wheels.mkdir(parents=True, exist_ok=True)
    pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), "-r", str(lock)])
    print(f"{env}: {len(list(wheels.glob('*.whl')))} wheels in {wheels}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("console", "ml", "ml-cuda"):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
