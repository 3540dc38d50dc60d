"""Where the ML execution environment's interpreter is, and a clear answer when it is missing.

The control plane never imports torch or transformers: job programs under workers/jobs/ run in the ML
environment's own virtualenv (ML_PYTHON), created by `make ml-env` from requirements-ml.txt.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings


class MLEnvironmentMissing(RuntimeError):
    """ML_PYTHON does not point at a runnable interpreter."""


def ml_python() -> str:
    """The ML environment's python, or MLEnvironmentMissing with what to do about it."""
    path = Path(settings.ML_PYTHON)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise MLEnvironmentMissing(
            f"The ML environment was not found: ML_PYTHON={path} is not an executable file. "
            "Create it with `make ml-env` (pip install -r requirements-ml.txt in its own virtualenv), "
            "or set ML_PYTHON to its interpreter."
        )
    return str(path)


def job_command(module: str, *args: str) -> list[str]:
    """The command line that runs a workers/jobs program in the ML environment."""
    return [ml_python(), "-m", f"workers.jobs.{module}", *args]


def distributed_job_command(module: str, processes: int, *args: str) -> list[str]:
    """The command line that runs a workers/jobs program as `processes` data-parallel processes on this host
    (torchrun; each process sees RANK, LOCAL_RANK and WORLD_SIZE). Only rank 0's stdout reaches the console:
    the others' goes to torchrun's log files, so the events are one program's. torchrun exits 1 for any failure or
    stop (the events say which), and on SIGTERM gives the ranks 30 s to save their checkpoint before it kills
    them. One process is the plain command, which keeps the exit codes 2 (bad input) and 3 (stopped)."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a whole number from 1 up, not {processes!r}")
    if processes == 1:
        return job_command(module, *args)
    other_ranks_stdout = ",".join(f"{rank}:1" for rank in range(1, processes))  # local rank: 1 = stdout
    return [
        ml_python(),
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(processes),
        "--redirects",
        other_ranks_stdout,
        "-m",
        f"workers.jobs.{module}",
        *args,
    ]


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for a job program: the project on PYTHONPATH, nothing from the console's settings
    (TGI reads generic names such as PORT, HOSTNAME and API_KEY, so nothing leaks in by accident)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(settings.BASE_DIR),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HOME": os.environ.get("HOME", "/tmp"),  # noqa: S108 - a fallback HOME for libraries that want one
    }
    env.update(extra or {})
    return env


def check_ml_environment(app_configs=None, **kwargs) -> list:
    """`manage.py check`: a warning, not an error: the console runs without the ML environment, but the
    process runtime (serve.py, job programs on this machine) cannot."""
    from django.core.checks import Warning as CheckWarning

    try:
        ml_python()
    except MLEnvironmentMissing as exc:
        return [CheckWarning(str(exc), id="workers.W001")]
    return []
