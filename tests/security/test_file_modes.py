"""`make run` keeps its data to the user running it: before, DATA_DIR was 0755 and the SQLite database 0644,
readable by every local account (sessions, password hashes, encrypted secrets and their keys beside them)."""

from __future__ import annotations

import os
import stat

from console.devserver.supervisor import lock_down_data_dir


def test_make_run_locks_its_data_dir_to_the_user(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "console.sqlite3").write_text("db")
    os.chmod(data / "console.sqlite3", 0o644)  # an older install
    previous = os.umask(0o022)
    try:
        lock_down_data_dir(data)
        created_after = data / "console.sqlite3-wal"
        created_after.write_text("wal")  # what a child process writes later, under the inherited umask
        assert os.umask(0o022) == 0o077
    finally:
        os.umask(previous)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "console.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE(created_after.stat().st_mode) == 0o600
