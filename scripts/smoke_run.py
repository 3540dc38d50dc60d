"""Smoke run of `make run` on the embedded defaults, as a new user would do it.

Starts `make run` with a fresh data directory (SQLite, private Redis), waits for the URL it prints,
reads the first admin's password from the file it names, logs in over HTTP, asks a worker for a
ping through the API, then sends Ctrl-C and checks that every process stopped.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def main() -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="console-smoke-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "MAKEFLAGS", "MAKELEVEL"}}
    env.update(DATA_DIR=str(data_dir), CONSOLE_PORT=str(port), GATEWAY_PORT=str(free_port()))
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def reader() -> None:
        for line in process.stdout:
            lines.append(line.rstrip())
            if "The console is at" in line:
                ready.set()

    threading.Thread(target=reader, daemon=True).start()
    try:
        if not ready.wait(START_TIMEOUT):
            raise SystemExit(f"smoke: no URL within {START_TIMEOUT}s:\n" + "\n".join(lines[-40:]))
        output = "\n".join(lines)
        url = re.search(r"The console is at (http://\S+?/) ", output).group(1)
        password_file = Path(re.search(r"password is in (\S+)", output).group(1))
        mode = password_file.stat().st_mode & 0o777
        assert mode == 0o600, f"password file mode is {oct(mode)}"
        for path, expected in ((data_dir, 0o700), (data_dir / "console.sqlite3", 0o600)):
            found = path.stat().st_mode & 0o777
            assert found == expected, f"{path} has mode {oct(found)}, not {oct(expected)}"
        assert not re.search(r"password: \S+", output), "the password was printed"
        creds = dict(line.split(": ", 1) for line in password_file.read_text().splitlines())

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(url + "login/", timeout=30)
        assert page.status == 200 and "id_password" in page.read().decode()
        print(f"smoke: GET {url}login/ -> 200")
        csrf = next(c.value for c in jar if c.name == "csrftoken")
        body = urllib.parse.urlencode(
            {"username": creds["username"], "password": creds["password"], "csrfmiddlewaretoken": csrf}
        ).encode()
        request = urllib.request.Request(url + "login/", data=body, headers={"Referer": url + "login/"})
        dashboard = opener.open(request, timeout=30).read().decode()
        assert creds["username"] in dashboard and 'id="my-actions"' in dashboard, "login did not reach the dashboard"
        print(f"smoke: admin '{creds['username']}' logged in with the password from {password_file}")
        ping = json.loads(opener.open(url + "api/v1/ping", timeout=30).read())
        assert ping["pong"] is True
        print(f"smoke: GET /api/v1/ping -> worker {ping['worker']} in {ping['round_trip_ms']} ms")
        # The local worker is this machine's GPU agent: the host registers itself (no GPU here says why).
        deadline = time.monotonic() + 30
        while True:
            hosts = json.loads(opener.open(url + "api/v1/hosts/", timeout=30).read())["results"]
            if hosts or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert hosts and hosts[0]["status"] == "online", f"the local host did not register: {hosts}"
        print(
            f"smoke: local host {hosts[0]['name']} registered with {len(hosts[0]['gpus'])} GPU(s)"
            + (f" ({hosts[0]['discovery_note']})" if hosts[0]["discovery_note"] else "")
        )
        # The inference gateway answers where the console says, in OpenAI's dialect, and refuses a call without a key.
        gateway = re.search(r"applications call models at (http://\S+?)/v1 ", output).group(1)
        with urllib.request.urlopen(gateway + "/health", timeout=30) as health:
            assert health.status == 200
        try:
            urllib.request.urlopen(urllib.request.Request(gateway + "/v1/models"), timeout=30)
            raise AssertionError("the gateway answered /v1/models without a key")
        except urllib.error.HTTPError as refusal:
            assert refusal.code == 401, refusal.code
            assert json.loads(refusal.read())["error"]["code"] == "invalid_api_key"
        print(f"smoke: gateway {gateway} healthy; /v1/models without a key -> 401 invalid_api_key")
    finally:
        pids = [int(p) for p in re.findall(r"started \(pid (\d+)\)", "\n".join(lines))]
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise SystemExit("smoke: `make run` did not stop within 90 s of Ctrl-C") from None
    time.sleep(0.5)
    left = [pid for pid in pids if alive(pid)]
    assert len(pids) == 4, f"expected web, gateway, worker and beat pids, saw {pids}"
    assert not left, f"processes still running after Ctrl-C: {left}"
    assert "redis: stopped" in "\n".join(lines), "the private redis-server was not stopped"
    assert not (data_dir / "redis" / "redis.sock").exists()
    print("smoke: Ctrl-C stopped web, gateway, worker, beat and redis")
    print("smoke: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
