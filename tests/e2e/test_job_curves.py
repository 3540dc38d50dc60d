"""In a real browser against a real daphne: a fine-tune's page draws its training curves from the log's metric
lines (the backlog on load, then live), a reload redraws every point, the progress reads "step X of Y" with the
time left, a checkpoint reads as a sentence, and every script and stylesheet comes from the console itself."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, JobFactory, ModelArtifactFactory, UserFactory

pytestmark = pytest.mark.browser

CHARTS = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "step_time")
TOTAL = 100
STEP_SECONDS = 0.5


def metric(step: int) -> dict:
    values = {
        "step": step,
        "loss": round(2.5 - 0.02 * step, 4),
        "learning_rate": 2e-4 * (1 - step / TOTAL),
        "grad_norm": 1.0 + 0.01 * step,
        "tokens_per_second": 1800.0 + step,
        "step_time": STEP_SECONDS,
        "epoch": step / TOTAL,
    }
    if step % 10 == 0:
        values["eval_loss"] = round(2.6 - 0.02 * step, 4)
    return values


class JobCurvesTests(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _browser(self, browser, artifacts):
        self.browser = browser
        self.artifacts = artifacts

    def write_steps(self, log, job, steps: range, *, eta_seconds: float | None) -> None:
        """What the fine-tune handler writes: a metric line per step, then the progress (line and row)."""
        for step in steps:
            log.write("", stream="metric", data=metric(step))
        progress = {"step": steps[-1], "total": TOTAL}
        if eta_seconds is not None:
            progress["eta_seconds"] = eta_seconds
        log.write("", stream="progress", data=progress)
        log.flush()
        job.progress = progress
        job.save(update_fields=["progress"])

    def points(self, page) -> dict[str, int]:
        return {name: int(page.get_attribute(f"[data-chart='{name}']", "data-points")) for name in CHARTS}

    def wait_for_points(self, page, count: int) -> None:
        page.wait_for_selector(f"[data-chart='loss'][data-points='{count}']", state="attached", timeout=10_000)

    def test_curves_fill_from_the_backlog_grow_live_and_survive_a_reload(self):
        from deployments.jobs.log import JobLog
        from deployments.models import Job

        job = JobFactory(
            kind=Job.Kind.FINETUNE,
            target=ModelArtifactFactory(repo__repo_id="acme/e2e-tune"),
            status=Job.Status.RUNNING,
        )
        log = JobLog(job)
        log.write("training 100 steps on 1 GPU")
        self.write_steps(log, job, range(1, 21), eta_seconds=160.0)
        log.write("checkpoint", stream="event", data={"step": 20, "path": "/ckpt/job/checkpoint-20", "tier": "fast"})
        log.flush()
        engineer = UserFactory(username="engineer-curves", roles=["engineer"])

        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", engineer.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        page.goto(f"{self.live_server_url}/jobs/{job.pk}/")

        # The backlog: every chart drawn (a canvas each), eval loss on the loss chart, nothing as raw JSON.
        self.wait_for_points(page, 20)
        assert self.points(page) == dict.fromkeys(CHARTS, 20)
        assert page.is_visible("#job-curves") and page.locator("#job-curves canvas").count() >= len(CHARTS)
        assert "eval loss" in page.inner_text("[data-chart='loss']")
        page.wait_for_selector("#job-log >> text=checkpoint at step 20: /ckpt/job/checkpoint-20", timeout=10_000)
        log_text = page.inner_text("#job-log")
        assert "training 100 steps on 1 GPU" in log_text
        assert '"loss"' not in log_text and "{" not in log_text
        assert page.inner_text("[data-progress='step']") == "step 20 of 100"
        assert page.inner_text("[data-progress='eta']") == "2 min 40 s"
        assert page.is_hidden("[data-progress='file']")  # the download fields are not for training

        # Live: five more steps while the page is open; this progress has no time left, so the page measures it.
        page.wait_for_selector("#job-stream-state >> text=live", timeout=10_000)
        self.write_steps(log, job, range(21, 26), eta_seconds=None)
        self.wait_for_points(page, 25)
        assert self.points(page) == dict.fromkeys(CHARTS, 25)
        page.wait_for_selector("[data-progress='step'] >> text=step 25 of 100", timeout=10_000)
        assert page.inner_text("[data-progress='eta']") == "37 s"  # 75 steps left at 0.5 s each
        assert page.get_attribute("#job-progress [role='progressbar']", "aria-valuenow") == "25"
        page.screenshot(path=str(self.artifacts / "job-curves-live.png"), full_page=True)

        # A reload loses nothing: every point again, from the backlog.
        page.reload()
        self.wait_for_points(page, 25)
        assert self.points(page) == dict.fromkeys(CHARTS, 25)
        assert page.get_attribute("#job-curves", "data-points") == "25"
        assert "step 25 of 100" in page.inner_text("#job-facts")

        # Every script and stylesheet is the console's own; nothing was fetched from anywhere else.
        origin = urlsplit(self.live_server_url).netloc
        sources = page.eval_on_selector_all(
            "script[src], link[rel='stylesheet']", "elements => elements.map(e => e.src || e.href)"
        )
        assert any(source.endswith("/static/vendor/uplot/uPlot.iife.min.js") for source in sources)
        assert any(source.endswith("/static/vendor/uplot/uPlot.min.css") for source in sources)
        assert [source for source in sources if urlsplit(source).netloc != origin] == []
        assert [url for url in requested if urlsplit(url).netloc not in (origin, "")] == []
        context.close()
