from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from audit import api as audit_api
from console.accounts import api as accounts_api
from console.api import views
from deployments.benchmarks import api as benchmarks_api
from deployments.benchmarks import schedule_api as bench_schedule_api
from deployments.datasets import api as datasets_api
from deployments.finetune import api as finetune_api
from deployments.gateway import key_api, log_api, usage_api
from deployments.inventory import api as inventory_api
from deployments.jobs import api as jobs_api
from deployments.monitoring import charts_api, health_api
from deployments.quality import api as quality_api
from deployments.quality import variants_api
from deployments.registry import api as registry_api
from deployments.serving import api as deployments_api
from deployments.serving import approvals_api

router = DefaultRouter(trailing_slash=True)
router.include_format_suffixes = False  # one URL per resource: ?format= is enough
router.register("users", accounts_api.UserViewSet, basename="user")
router.register("grants", accounts_api.GrantViewSet, basename="grant")
router.register("teams", accounts_api.TeamViewSet, basename="team")
router.register("tokens", accounts_api.TokenViewSet, basename="token")
router.register("credentials", accounts_api.CredentialViewSet, basename="credential")
router.register("audit/events", audit_api.AuditEventViewSet, basename="audit-event")
router.register("audit/checkpoints", audit_api.AuditCheckpointViewSet, basename="audit-checkpoint")
router.register("hosts", inventory_api.HostViewSet, basename="host")
router.register("gpus", inventory_api.GpuViewSet, basename="gpu")
router.register("models", registry_api.ModelArtifactViewSet, basename="model")
router.register("sources", registry_api.SourceViewSet, basename="source")
router.register("endpoints", registry_api.AllowedEndpointViewSet, basename="endpoint")
router.register("jobs", jobs_api.JobViewSet, basename="job")
router.register("deployments", deployments_api.DeploymentViewSet, basename="deployment")
router.register("images", deployments_api.AllowedImageViewSet, basename="image")
router.register("approvals", approvals_api.ApprovalRequestViewSet, basename="approval")
# uploads before datasets: "datasets/{pk}/" would take "uploads" for a pk
router.register("datasets/uploads", datasets_api.DatasetUploadViewSet, basename="dataset-upload")
router.register("datasets", datasets_api.DatasetViewSet, basename="dataset")
router.register("finetunes", finetune_api.FinetuneViewSet, basename="finetune")
router.register("adapters", finetune_api.AdapterViewSet, basename="adapter")
router.register("quantize-jobs", quality_api.QuantizeViewSet, basename="quantize-job")
router.register("evaluate-jobs", quality_api.EvaluateViewSet, basename="evaluate-job")
router.register("eval-results", quality_api.EvalResultViewSet, basename="eval-result")
router.register("benchmarks", benchmarks_api.BenchmarkViewSet, basename="benchmark")
router.register("benchmark-schedules", bench_schedule_api.BenchmarkScheduleViewSet, basename="benchmark-schedule")
router.register("benchmark-alerts", bench_schedule_api.BenchmarkAlertViewSet, basename="benchmark-alert")
router.register("benchmark-trend", bench_schedule_api.BenchmarkTrendViewSet, basename="benchmark-trend")
router.register("inference-keys", key_api.InferenceKeyViewSet, basename="inference-key")
router.register("service-accounts", key_api.ServiceAccountViewSet, basename="service-account")
router.register("team-quotas", key_api.TeamQuotaViewSet, basename="team-quota")
router.register("inference-log", log_api.InferenceLogViewSet, basename="inference-log")
router.register("health-checks", health_api.HealthCheckViewSet, basename="health-check")
router.register("charts", charts_api.ChartViewSet, basename="chart")

urlpatterns = [
    path("ping", views.PingView.as_view(), name="ping"),
    path("me", accounts_api.MeView.as_view(), name="me"),
    path("me/password/", accounts_api.PasswordChangeView.as_view(), name="me-password"),
    path("sizing/", inventory_api.SizingApiView.as_view(), name="sizing"),
    path("audit/verification/", audit_api.AuditVerificationView.as_view(), name="audit-verification"),
    path("usage/", usage_api.UsageApiView.as_view(), name="usage"),
    path("usage.csv", usage_api.UsageCsvApiView.as_view(), name="usage-csv"),
    path("models/<int:pk>/variants/", variants_api.ArtifactVariantsView.as_view(), name="model-variants"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("", include(router.urls)),
]
