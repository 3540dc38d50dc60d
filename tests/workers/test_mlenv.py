"""The console finds the ML environment through ML_PYTHON and says clearly when it is missing."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from workers import mlenv


def test_missing_ml_environment_names_the_path_and_the_fix(settings, tmp_path, capsys):
    settings.ML_PYTHON = str(tmp_path / "nowhere" / "python")
    with pytest.raises(mlenv.MLEnvironmentMissing) as raised:
        mlenv.job_command("serve", "--model-id", "x")
    message = str(raised.value)
    assert str(tmp_path / "nowhere" / "python") in message and "make ml-env" in message
    [warning] = mlenv.check_ml_environment()
    assert warning.id == "workers.W001"
    call_command("check")
    assert "workers.W001" in capsys.readouterr().err


def test_job_command_and_clean_environment(settings, tmp_path, monkeypatch):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    settings.ML_PYTHON = str(python)
    assert mlenv.job_command("serve", "--port", "80") == [str(python), "-m", "workers.jobs.serve", "--port", "80"]
    monkeypatch.setenv("API_KEY", "leaked")
    monkeypatch.setenv("PORT", "1234")
    env = mlenv.job_env({"CUDA_VISIBLE_DEVICES": "0"})
    assert "API_KEY" not in env and "PORT" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["HF_HUB_OFFLINE"] == "1"
    assert mlenv.check_ml_environment() == []


def test_distributed_job_command_runs_the_program_under_torchrun_with_one_process_speaking(settings, tmp_path):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    settings.ML_PYTHON = str(python)
    assert mlenv.distributed_job_command("finetune", 4, "--spec", "s.json") == [
        str(python),
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "4",
        "--redirects",
        "1:1,2:1,3:1",  # ranks 1-3 print their stdout to torchrun's log files: the events are rank 0's
        "-m",
        "workers.jobs.finetune",
        "--spec",
        "s.json",
    ]
    # One process needs no launcher, and keeps the program's own exit codes.
    assert mlenv.distributed_job_command("finetune", 1, "--spec", "s.json") == mlenv.job_command(
        "finetune", "--spec", "s.json"
    )
    for wrong in (0, -2, True, 1.5, "2"):
        with pytest.raises(ValueError, match="processes must be a whole number"):
            mlenv.distributed_job_command("finetune", wrong)
