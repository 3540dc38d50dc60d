"""The health_check job kind (console queue): the console's own checks, then an integrity sweep job per host."""

from __future__ import annotations

from deployments.models import Job
from deployments.monitoring import health_services
from deployments.monitoring.models import HealthCheckRun
from workers.runner import Handler, JobContext, register


@register("health_check")
class HealthCheckHandler(Handler):
    """GPU, audit, deployments, certificates and backups here; the model stores on their hosts."""

    def run(self, ctx: JobContext) -> dict:
        run = HealthCheckRun.objects.get(pk=ctx.job.params["run"])
        ctx.log(f"health check {run.pk}: console checks")
        health_services.run_console_checks(run)
        run.refresh_from_db()
        jobs = run.progress.get("jobs", [])
        ctx.log(
            f"integrity sweep: {len(jobs)} host job(s) {jobs}; hosts not online: {run.progress.get('unswept_hosts')}"
        )
        return {"run": run.pk, "sweep_jobs": jobs}

    def finished(self, ctx: JobContext, status: str) -> None:
        if status != Job.Status.SUCCEEDED:
            health_services.health_check_failed(ctx.job.params["run"], ctx.failure_detail or status)
