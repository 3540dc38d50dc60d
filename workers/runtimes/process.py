"""The process runtime: a model server as a local process group (single machine, CI, laptops).

The backend's launcher (`text-generation-launcher`, `vllm serve`) when it is installed on the host, otherwise
its stand-in in the ML environment (serve.py and its vLLM flavour) with the same arguments. Each server gets its
own session (process group), so stop ends the whole tree; its output goes to a log file read by offset, and a
small state file records pid, labels and port, so a restarted worker finds, follows and stops servers it did not
start. A `sh` wrapper records the exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from django.conf import settings

from workers.mlenv import job_command, job_env
from workers.runtimes.base import Handle, RunSpec, RuntimeFailure, Status, secret_env_loader, traced

# sh waits for the server and writes its exit status; a TERM trap (not an ignore, which children would
# inherit) keeps sh alive long enough to record it when the group is signalled.
WRAPPER = 'trap "true" TERM INT; "$@"; code=$?; echo "$code" > "$EXIT_FILE"; exit "$code"'


def _state_dir() -> Path:
    path = Path(settings.DATA_DIR) / "runtimes" / "process"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class ProcessRuntime:
    name = "process"

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir or _state_dir()

    # -- paths and records -------------------------------------------------------------------------------
    def _files(self, name: str) -> tuple[Path, Path, Path]:
        return self.state_dir / f"{name}.json", self.state_dir / f"{name}.log", self.state_dir / f"{name}.exit"

    def _record(self, name: str) -> dict | None:
        state, _log, _exit = self._files(name)
        try:
            return json.loads(state.read_text())
        except (OSError, ValueError):
            return None

    def _handle(self, record: dict) -> Handle:
        return Handle(
            runtime=self.name,
            ref=str(record["pid"]),
            name=record["name"],
            labels=record["labels"],
            port=record["port"],
            endpoint=record["endpoint"],
            command=list(record.get("command") or []),
        )

    @staticmethod
    def launcher(spec: RunSpec) -> list[str]:
        """The backend's launcher when installed natively, else its stand-in in the ML environment (same
        arguments)."""
        program, *rest = spec.launcher
        native = shutil.which(program)
        if native and not settings.PROCESS_RUNTIME_FORCE_SERVE:
            return [native, *rest]
        return job_command(spec.launcher_stand_in)

    # -- the interface ---------------------------------------------------------------------------------------
    @traced("start")
    def start(self, spec: RunSpec) -> Handle:
        if self._record(spec.name) is not None and self.status_by_name(spec.name).alive:
            raise RuntimeFailure(f"a server named {spec.name} already runs on this host")
        try:
            command = (list(spec.program) or self.launcher(spec)) + list(spec.args)
        except Exception as exc:  # MLEnvironmentMissing: the message says what to do
            raise RuntimeFailure(str(exc), cause="ml_environment_missing") from exc
        state, log, exit_file = self._files(spec.name)
        exit_file.unlink(missing_ok=True)
        secrets_dir = self.state_dir / f"{spec.name}.secrets"
        env = job_env({"HOME": str(self.state_dir), **spec.env, "EXIT_FILE": str(exit_file)})
        script = WRAPPER
        if spec.secret_files or spec.secret_env:
            shutil.rmtree(secrets_dir, ignore_errors=True)
            secrets_dir.mkdir(mode=0o700)
            for variable, content in spec.secret_files.items():
                env[variable] = str(self._secret_file(secrets_dir / variable.lower(), content))
            loaded = {
                variable: str(self._secret_file(secrets_dir / f"env-{variable.lower()}", content))
                for variable, content in spec.secret_env.items()
            }
            if loaded:  # the values reach the server's environment at start, never the command line
                script = secret_env_loader(loaded) + "; " + WRAPPER
        workdir = Path(spec.workdir) if spec.workdir else self.state_dir / f"{spec.name}.work"
        workdir.mkdir(parents=True, exist_ok=True)
        # A fresh log per start: whoever follows it starts at cursor 0 (an earlier run's lines are in its job log).
        with log.open("wb") as output:
            process = subprocess.Popen(
                ["/bin/sh", "-c", script, "sh", *command],
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        endpoint = f"http://{spec.bind_address}:{spec.port}"
        record = {
            "name": spec.name,
            "pid": process.pid,
            "start_time": _start_time(process.pid),
            "labels": spec.labels,
            "port": spec.port,
            "endpoint": endpoint,
            "command": command,
            "log": str(log),
            "started_at": time.time(),
        }
        state.write_text(json.dumps(record))
        return self._handle(record)

    def status_by_name(self, name: str) -> Status:
        record = self._record(name)
        if record is None:
            return Status("missing")
        pid = int(record["pid"])
        if _alive(pid) and _start_time(pid) == record.get("start_time"):
            return Status("running")
        _state, _log, exit_file = self._files(name)
        try:
            code = int(exit_file.read_text().strip())
        except (OSError, ValueError):
            code = None
        return Status(
            "exited",
            exit_code=code,
            oom_killed=code == 137,
            detail="" if code is not None else "exit status not recorded (the process group was killed)",
        )

    def status(self, handle: Handle) -> Status:
        return self.status_by_name(handle.name)

    def logs(self, handle: Handle, since: int) -> tuple[list[str], int]:
        """Complete lines after byte offset `since`; a partial last line waits for its newline."""
        _state, log, _exit = self._files(handle.name)
        try:
            with log.open("rb") as stream:
                stream.seek(since)
                data = stream.read(8 * 2**20)
        except OSError:
            return [], since
        end = data.rfind(b"\n")
        if end < 0:
            return [], since
        chunk = data[: end + 1]
        return chunk.decode("utf-8", errors="replace").splitlines(), since + len(chunk)

    @traced("stop")
    def stop(self, handle: Handle, grace: float) -> Status:
        record = self._record(handle.name)
        if record is None:
            return Status("missing")
        pid = int(record["pid"])
        if self.status_by_name(handle.name).alive:
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._group_alive(pid):
                time.sleep(0.1)
            if self._group_alive(pid):
                self._signal(pid, signal.SIGKILL)
                time.sleep(0.2)
        self._reap(pid)
        return self.status_by_name(handle.name)

    def remove(self, handle: Handle) -> None:
        self.stop(handle, grace=5)
        state, _log, exit_file = self._files(handle.name)
        state.unlink(missing_ok=True)
        exit_file.unlink(missing_ok=True)
        shutil.rmtree(self.state_dir / f"{handle.name}.secrets", ignore_errors=True)
        shutil.rmtree(self.state_dir / f"{handle.name}.work", ignore_errors=True)

    def find(self, labels: dict[str, str]) -> list[Handle]:
        found = []
        for path in sorted(self.state_dir.glob("*.json")):
            record = self._record(path.stem)
            if record and all(record["labels"].get(key) == value for key, value in labels.items()):
                found.append(self._handle(record))
        return found

    # -- helpers -------------------------------------------------------------------------------------------------
    @staticmethod
    def _secret_file(path: Path, content: str) -> Path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        return path

    @staticmethod
    def _signal(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        """Any process of the group still alive (not a zombie)."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if fields[0] != "Z" and int(fields[2]) == pgid:
                    return True
        return False

    @staticmethod
    def _reap(pid: int) -> None:
        """Collect our own child's exit status, if it is ours (a restarted worker's servers are not)."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
