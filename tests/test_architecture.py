"""The import contract (`lint-imports`, run by `make lint`) holds on the tree and catches a wrong import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("console", "deployments", "audit", "workers")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    # lint-imports finds the packages from its working directory, so it reads the copy, not the checkout.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def tree(tmp_path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_every_contract(tree):
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "message"),
    [
        # The audit sits below the domains: it may not know a deployment.
        ("audit/chain.py", "from deployments.models import Job", "audit.chain -> deployments.models"),
        # Services dispatch by task name; a domain importing the workers' task module is refused.
        ("deployments/jobs/services.py", "from workers.tasks import run_job", "deployments.jobs.services -> workers"),
        # The planner is pure arithmetic: no Django.
        ("deployments/sizing/plan.py", "from django.conf import settings", "deployments.sizing.plan -> django"),
        # Job programs run in the ML environment, which has no Django and no console.
        ("workers/jobs/serve.py", "from console import roles", "workers.jobs.serve -> console"),
    ],
)
def test_a_wrong_import_breaks_the_contract(tree, module, line, message):
    target = tree / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert message in result.stdout


def test_pre_commit_runs_the_same_checks_with_local_hooks_only():
    """Remote hook repositories cannot be fetched here: every hook calls the virtualenv's own tools."""
    import yaml

    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert {repo["repo"] for repo in config["repos"]} == {"local"}
    assert {hook["id"] for hook in hooks} == {"ruff-check", "ruff-format", "import-contracts"}
    for hook in hooks:
        tool = ROOT / hook["entry"].split()[0]
        assert tool.is_file(), f"{hook['id']}: {tool} (make install creates it)"
    makefile = (ROOT / "Makefile").read_text()
    assert "ruff format --check" in makefile and "lint-imports" in makefile  # make lint runs them too


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "console.settings", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_app_packages_import_before_the_registry_is_ready():
    """Why `audit.record` imports its recorder when called: Django imports every app package while it populates
    the registry, before any model can be imported; importing the recorder there fails."""
    fine = _fresh_python("import audit, console, deployments, workers; print('ok')")
    assert fine.returncode == 0 and "ok" in fine.stdout, fine.stderr
    early = _fresh_python("import audit.recorder")
    assert early.returncode != 0 and "AppRegistryNotReady" in early.stderr


def test_a_process_host_never_loads_the_docker_sdk():
    """Why runtimes are imported when asked for: the docker SDK stays out of hosts that run processes."""
    probe = _fresh_python(
        "import sys, django; django.setup()\n"
        "from workers.runtimes import get_runtime\n"
        "get_runtime('process')\n"
        "print('docker' in sys.modules)"
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().splitlines()[-1] == "False"
