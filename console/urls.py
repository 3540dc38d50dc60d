from django.contrib.auth import views as auth_views
from django.urls import include, path

from console import views
from console.accounts import team_views
from console.accounts import views as accounts

urlpatterns = [
    path("", views.DashboardView.as_view(), name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("users/", accounts.UserListView.as_view(), name="users"),
    path("users/<int:pk>/", accounts.UserAccessView.as_view(), name="user-access"),
    path("users/<int:pk>/password/", accounts.UserPasswordResetView.as_view(), name="user-password-reset"),
    path("account/password/", accounts.PasswordChangeView.as_view(), name="password-change"),
    path("grants/", accounts.GrantsView.as_view(), name="grants"),
    path("teams/", team_views.TeamListView.as_view(), name="teams"),
    path("teams/<int:pk>/", team_views.TeamDetailView.as_view(), name="team-detail"),
    path("tokens/", accounts.TokenListView.as_view(), name="tokens"),
    path("credentials/", accounts.CredentialListView.as_view(), name="credentials"),
    path("credentials/<int:pk>/", accounts.CredentialDetailView.as_view(), name="credential-detail"),
    path("credentials/rotate-key/", accounts.SecretsRotateView.as_view(), name="credentials-rotate"),
    path("audit/", include("audit.urls")),
    path("inventory/", include("deployments.inventory.urls")),
    path("models/", include("deployments.registry.urls")),
    path("deployments/", include("deployments.serving.urls")),
    path("approvals/", include("deployments.serving.approvals_urls")),
    path("jobs/", include("deployments.jobs.urls")),
    path("datasets/", include("deployments.datasets.urls")),
    path("finetune/", include("deployments.finetune.urls")),
    path("quality/", include("deployments.quality.urls")),
    path("benchmarks/schedules/", include("deployments.benchmarks.schedule_urls")),  # before "benchmarks/"
    path("benchmarks/", include("deployments.benchmarks.urls")),
    path("gateway/", include("deployments.gateway.urls")),
    path("", include("deployments.monitoring.urls")),  # /metrics, discovery, fleet charts, health checks
    path("internal/", include("deployments.datasets.internal_urls")),  # agents, with a job's token
    path("internal/", include("deployments.registry.internal_urls")),  # agents copying a model between hosts
    path("api/v1/", include(("console.api.urls", "api"), namespace="api")),
]
