"""`manage.py check --deploy` with production settings prints no warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]


def production_env(tmp_path) -> dict:
    # The browser tests' async-safety switch is a test-runner setting, never a production one.
    inherited = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    return dict(
        inherited,
        DEBUG="false",
        SECURE_TLS="true",
        SECRET_KEY="x" * 20 + "-production-secret-key-with-enough-entropy-9f8e7d6c5b4a",
        SECRETS_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        AUDIT_CHECKPOINT_KEY="checkpoint-key-for-the-test",
        ALLOWED_HOSTS="console.example.com",
        CSRF_TRUSTED_ORIGINS="https://console.example.com",
        DATA_DIR=str(tmp_path),
    )


def test_check_deploy_is_clean(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output
    assert "WARNINGS" not in output


def test_without_tls_the_check_names_what_is_missing(tmp_path):
    env = production_env(tmp_path) | {"SECURE_TLS": "false"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "SESSION_COOKIE_SECURE" in result.stdout + result.stderr
