import os
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from console.devserver.supervisor import Supervisor, lock_down_data_dir


class Command(BaseCommand):
    help = "Migrate, create the first admin, then run web + gateway + Celery worker + Celery beat until Ctrl-C."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=os.environ.get("CONSOLE_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("CONSOLE_PORT", "8000")))
        parser.add_argument("--concurrency", type=int, default=int(os.environ.get("WORKER_CONCURRENCY", "4")))

    def handle(self, *args, host: str, port: int, concurrency: int, **options) -> None:
        say = self.stdout.write
        lock_down_data_dir(Path(settings.DATA_DIR))
        supervisor = Supervisor(host=host, port=port, worker_concurrency=concurrency, say=say)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        call_command("ensure_admin")
        try:
            supervisor.start()
            supervisor.wait_ready()
            shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
            say(
                self.style.SUCCESS(
                    f"The console is at http://{shown_host}:{port}/ (data in {settings.DATA_DIR}); "
                    f"applications call models at http://{shown_host}:{supervisor.gateway_port}/v1 "
                    "(the inference gateway); press Ctrl-C to stop."
                )
            )
            code = supervisor.wait()
        finally:
            supervisor.stop()
        if code:
            raise SystemExit(code)
