"""A model server that starts in a few milliseconds, for lifecycle tests that need many real server processes.

Run as the ML environment's interpreter would run serve.py (`-m workers.jobs.serve --port N ...`, the process
runtime's command line unchanged), it binds --hostname:--port and answers the two routes the serve job polls,
/health and /info, until SIGTERM. It loads no model and imports nothing beyond the standard library, so it runs
under `python -S` and is up well under 0.1 s.
"""

from __future__ import annotations

import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _flag(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


class _Routes(BaseHTTPRequestHandler):
    info = b"{}"

    def do_GET(self) -> None:
        if self.path == "/health":
            body, kind = b"", "text/plain"
        elif self.path == "/info":
            body, kind = self.info, "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """Quiet: the job copies the output into its log."""


def main(argv: list[str]) -> int:
    host, port = _flag(argv, "--hostname", "127.0.0.1"), int(_flag(argv, "--port", "3000"))
    _Routes.info = json.dumps(
        {"model_id": _flag(argv, "--model-id", ""), "version": "tiny", "max_total_tokens": 256}
    ).encode()
    server = ThreadingHTTPServer((host, port), _Routes)
    # SIGTERM ends serve_forever from another thread's point of view: shutdown() must not run in the serving one.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("Connected", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    except SystemExit:
        print("signal received, starting graceful shutdown", flush=True)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
