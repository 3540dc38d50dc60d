"""Issue 17 in a real browser against a real daphne: a finished benchmark's page draws its charts from the job's
stream (a reload redraws every point) and flags the step whose queue was long; an admin applies the suggestion it
offers (confirming in the modal) and lands on the re-run waiting for the new spec version; once the deployment
runs that version the re-run starts, its steps arrive live (charts and rows fill in without a reload), and the
compare view shows the two runs side by side with the deltas and a verdict per figure. Screenshots of each."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from deployments.benchmarks import services, tuning
from deployments.jobs.log import JobLog
from deployments.models import BenchmarkRun, Deployment, Job
from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, DeploymentSpecFactory, GpuFactory, HostFactory, ModelArtifactFactory, UserFactory
from tests.support.bench_events import metric_events
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.browser
WORKLOAD = {"prompt_tokens": 32, "output_tokens": 16, "levels": [1, 4, 16], "duration_s": 5}
# The baseline at v1 (cuda_memory_fraction 0.8): at 16 at once the queue holds 12 requests, they wait 250 of a
# 300 ms TTFT and the KV cache is 97 % full; TGI's memory share is what the suggestion raises.
BEFORE = [
    {"c": 1, "n": 4, "ttft": 20, "gap": 10, "server": {"queue_size": 0.0, "kv_cache_usage_max": 0.05}},
    {"c": 4, "n": 8, "ttft": 40, "gap": 12, "spread": 15, "server": {"queue_size": 0.5, "kv_cache_usage_max": 0.4}},
    {"c": 16, "n": 12, "ttft": 300, "gap": 14, "spread": 60,
     "server": {"queue_size": 12.0, "kv_cache_usage_max": 0.97, "server_queue_ms_mean": 250.0}},
]  # fmt: skip
# The re-run at v2: the same at 1 and 4, the queue gone at 16 (a quarter of the TTFT, more streams per second).
AFTER = [
    {"c": 1, "n": 4, "ttft": 20, "gap": 10, "server": {"queue_size": 0.0, "kv_cache_usage_max": 0.04}},
    {"c": 4, "n": 8, "ttft": 41, "gap": 12, "spread": 15, "server": {"queue_size": 0.4, "kv_cache_usage_max": 0.3}},
    {"c": 16, "n": 20, "ttft": 75, "gap": 14, "spread": 20,
     "server": {"queue_size": 1.0, "kv_cache_usage_max": 0.7, "server_queue_ms_mean": 20.0}},
]  # fmt: skip


class BenchmarkPagesTests(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _fixtures(self, browser, artifacts, tmp_path):
        self.browser, self.artifacts, self.tmp_path = browser, artifacts, tmp_path

    def deployment(self) -> Deployment:
        """A TGI deployment of the tiny model running on GPU 0 (16 GB) of its host, cuda_memory_fraction 0.8."""
        host = HostFactory(name="bench-e2e-node")
        GpuFactory(host=host, index=0, memory_total=16 * 10**9)
        artifact = ModelArtifactFactory(
            host=host, path=str(write_llama_dir(self.tmp_path / "tiny")), repo__repo_id="org/tiny"
        )
        spec = DeploymentSpecFactory(
            deployment__name="bench-e2e",
            deployment__state=Deployment.State.RUNNING,
            artifact=artifact,
            current=True,
            max_input_tokens=128,
            max_total_tokens=256,
            cuda_memory_fraction=0.8,
        )
        Deployment.objects.filter(pk=spec.deployment_id).update(host=host, gpu_indexes=[0])
        return Deployment.objects.get(pk=spec.deployment_id)

    def record(self, run: BenchmarkRun, steps: list[dict]) -> None:
        """What the benchmark job does with each step event: a row, and a metric line on the job's stream."""
        log = JobLog(run.job)
        for event in metric_events(steps):
            services.step_recorded(run, event)
            log.write("", stream="metric", data={k: v for k, v in event.items() if k not in ("type", "time")})
        log.flush()

    def finish(self, run: BenchmarkRun) -> None:
        Job.objects.filter(pk=run.job_id).update(status=Job.Status.SUCCEEDED)
        services.benchmark_finished(run, status=Job.Status.SUCCEEDED)

    def points(self, page, chart: str) -> int:
        return int(page.get_attribute(f"[data-chart='{chart}']", "data-points"))

    def test_a_suggestion_applied_and_verified_and_the_runs_compared(self):
        admin = UserFactory(username="bench-admin", roles=["admin"])
        deployment = self.deployment()
        baseline = services.benchmark_start(actor=admin, deployment=deployment, workload=WORKLOAD, note="v1")
        self.record(baseline, BEFORE)
        self.finish(baseline)

        context = self.browser.new_context(viewport={"width": 1500, "height": 1100})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", admin.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")

        # The baseline's page: three steps drawn on both charts, the queueing step's server figures, a suggestion.
        page.goto(f"{self.live_server_url}/benchmarks/{baseline.pk}/")
        page.wait_for_selector("[data-chart='curve'][data-points='3']", state="attached", timeout=10_000)
        assert self.points(page, "ttft") == 3 and page.locator("#bench-charts canvas").count() >= 2
        assert page.locator("#bench-steps tbody tr[data-step]").count() == 3
        assert "97 %" in page.inner_text("#bench-server tr[data-step='2']")
        suggestion = page.locator("[data-suggestion='queue_memory_headroom']")
        assert "cuda_memory_fraction=1.0" in suggestion.inner_text() and "12 requests" in suggestion.inner_text()
        page.reload()  # the backlog again: every point
        page.wait_for_selector("[data-chart='curve'][data-points='3']", state="attached", timeout=10_000)
        page.screenshot(path=str(self.artifacts / "benchmark-baseline.png"), full_page=True)

        # Apply, confirmed in the modal: a new version with the change, and the re-run waiting for it.
        suggestion.locator("button[type='submit']").click()
        page.wait_for_selector("#confirm-modal.show", timeout=5_000)
        assert "new spec version" in page.inner_text("#confirm-modal-text")
        page.click("#confirm-modal-ok")
        page.wait_for_selector("#bench-waiting", timeout=10_000)
        rerun = BenchmarkRun.objects.get(baseline=baseline)
        assert urlsplit(page.url).path == f"/benchmarks/{rerun.pk}/"
        assert "Waiting for version 2" in page.inner_text("#bench-waiting")
        assert "waiting for version 2" in page.inner_text("[data-waiting]")
        deployment.refresh_from_db()
        assert deployment.spec.version == 2 and deployment.spec.cuda_memory_fraction == 1.0
        assert deployment.spec.note.startswith(f"benchmark #{baseline.pk}: ")
        assert rerun.workload == baseline.workload and rerun.suggestion["change"] == {"cuda_memory_fraction": 1.0}
        page.screenshot(path=str(self.artifacts / "benchmark-rerun-waiting.png"), full_page=True)

        # The server came back on v2 (the restart the apply asked for): the beat starts the re-run, whose steps
        # then arrive while its page is open.
        Deployment.objects.filter(pk=deployment.pk).update(
            state=Deployment.State.RUNNING, host=deployment.host, gpu_indexes=[0]
        )
        assert tuning.reruns_due() == 1
        rerun.refresh_from_db()
        assert rerun.job is not None and rerun.spec.version == 2
        page.reload()
        page.wait_for_selector("#job-stream-state >> text=live", timeout=10_000)
        assert page.locator("#bench-steps-empty").count() == 1
        self.record(rerun, AFTER)
        page.wait_for_selector("[data-chart='curve'][data-points='3']", state="attached", timeout=10_000)
        page.wait_for_selector("#bench-steps tbody tr[data-step='2']", timeout=10_000)
        assert page.locator("#bench-steps tbody tr[data-step]").count() == 3
        assert page.locator("#bench-steps-empty").count() == 0
        page.screenshot(path=str(self.artifacts / "benchmark-rerun-live.png"), full_page=True)
        self.finish(rerun)

        # Before and after, side by side: at 16 at once the TTFT fell and the tokens per second rose.
        page.reload()
        page.click("#compare-baseline")
        page.wait_for_selector("#compare-table", timeout=10_000)
        assert urlsplit(page.url).query == f"runs={baseline.pk},{rerun.pk}"
        page.wait_for_selector("[data-chart='curve'][data-points]:not([data-points='0'])", state="attached")
        heavy = page.locator("tbody[data-load='concurrency'][data-level='16.0']")
        ttft = heavy.locator("tr[data-figure='ttft_ms_p50'] td[data-run-index='1']")
        before, after = metric_events(BEFORE)[2]["ttft_ms_p50"], metric_events(AFTER)[2]["ttft_ms_p50"]
        change = f"{after - before:+.1f} ({100 * (after - before) / before:+.1f} %)".replace(".0 ", " ")
        assert ttft.get_attribute("data-verdict") == "better" and change in ttft.inner_text(), (change, before, after)
        tokens = heavy.locator("tr[data-figure='output_tokens_per_s'] td[data-run-index='1']")
        assert tokens.get_attribute("data-verdict") == "better"
        light = page.locator("tbody[data-load='concurrency'][data-level='1.0']")
        assert (
            light.locator("tr[data-figure='ttft_ms_p50'] td[data-run-index='1']").get_attribute("data-verdict")
            == "same"
        )
        header = page.locator(f"#compare-runs [data-run='{rerun.pk}']")
        assert "v2" in header.inner_text() and "cuda_memory_fraction=1.0" in header.inner_text()
        assert header.locator("[data-verdict-badge]").get_attribute("data-verdict-badge") == "better"
        page.screenshot(path=str(self.artifacts / "benchmark-compare.png"), full_page=True)

        # From the list: tick both (newest first there), compare: the older run is the baseline.
        page.goto(f"{self.live_server_url}/benchmarks/")
        page.check(f"#compare-{rerun.pk}")
        page.check(f"#compare-{baseline.pk}")
        page.click("#benchmark-compare")
        page.wait_for_selector("#compare-table", timeout=10_000)
        assert page.locator("[data-baseline]").count() == 1
        assert page.locator(f"#compare-runs [data-run='{baseline.pk}'] [data-baseline]").count() == 1

        # The start form with the deployment's preset (a TGI deployment: its native stream, prompts of 128 / 4).
        page.goto(f"{self.live_server_url}/benchmarks/new/?deployment={deployment.pk}")
        assert (
            page.input_value("#id_dialect") == "tgi-generate-stream" and page.input_value("#id_prompt_tokens") == "32"
        )
        page.screenshot(path=str(self.artifacts / "benchmark-form.png"), full_page=True)

        assert errors == []
        origin = urlsplit(self.live_server_url).netloc
        assert [url for url in requested if urlsplit(url).netloc not in (origin, "")] == []
        context.close()
