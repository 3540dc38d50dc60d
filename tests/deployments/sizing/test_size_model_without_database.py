"""`manage.py size_model` on a fresh checkout: no database yet (a SQLite file that does not exist), a new DATA_DIR.

It must still size the model and say that the inventory fit was skipped, not fail with `no such table`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.fixtures import MODEL_CONFIGS, ROOT

EXPECTED = json.loads((MODEL_CONFIGS / "expected.json").read_text())


def fresh_console_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DATA_DIR", "HF_"))}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}",
        DATA_DIR=str(tmp_path / "data"),
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
    )
    return env


def size_model(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "size_model", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_directory_is_sized_before_the_console_is_set_up(tmp_path):
    model = tmp_path / "llama-3.1-8b-instruct"
    model.mkdir()
    (model / "config.json").write_bytes((MODEL_CONFIGS / "llama-3.1-8b-instruct.json").read_bytes())
    done = size_model(fresh_console_env(tmp_path), str(model))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "8.03 B parameters" in done.stdout
    assert "131,072 bytes/token" in done.stdout
    assert "note: inventory fit skipped: no console database to read GPU hosts from" in done.stdout
    assert "manage.py migrate" in done.stdout


def test_a_hub_repo_is_sized_before_the_console_is_set_up(tmp_path, hub_server):
    hub_server.add_repo(
        "deepseek-ai/deepseek-llm-7b-base", {"config.json": (MODEL_CONFIGS / "deepseek-llm-7b-base.json").read_bytes()}
    )
    env = fresh_console_env(tmp_path) | {"HF_ENDPOINT": hub_server.endpoint}
    done = size_model(env, "deepseek-ai/deepseek-llm-7b-base", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["params"] == EXPECTED["deepseek-llm-7b-base"]["params"]
    assert report["revision_sha"] == hub_server.commit_sha("deepseek-ai/deepseek-llm-7b-base")
    assert all(row["fits"] is None for row in report["rows"])  # sizes only: no inventory to fit against
    assert any("inventory fit skipped" in note for note in report["notes"])
