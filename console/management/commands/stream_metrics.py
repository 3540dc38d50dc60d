from django.core.management.base import BaseCommand

from console import stream_metrics


class Command(BaseCommand):
    help = "Print the live streams' loss counters (summed over every process) in Prometheus text format."

    def handle(self, *args, **options) -> None:
        self.stdout.write(stream_metrics.prometheus_text(), ending="")
