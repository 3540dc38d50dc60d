from django.urls import path

from deployments.gateway import key_views, log_views, usage_views

urlpatterns = [
    path("usage/", usage_views.UsageView.as_view(), name="usage"),
    path("usage/export.csv", usage_views.UsageExportView.as_view(), name="usage-export"),
    path("inference-log/", log_views.InferenceLogView.as_view(), name="inference-log"),
    # Inference keys, service accounts and team quotas.
    path("keys/", key_views.KeyListView.as_view(), name="inference-keys"),
    path("keys/new/", key_views.KeyCreateView.as_view(), name="inference-key-create"),
    path("keys/<int:pk>/", key_views.KeyDetailView.as_view(), name="inference-key-detail"),
    path("keys/<int:pk>/revoke/", key_views.KeyRevokeView.as_view(), name="inference-key-revoke"),
    path("service-accounts/", key_views.ServiceAccountListView.as_view(), name="service-accounts"),
    path("service-accounts/<int:pk>/", key_views.ServiceAccountDetailView.as_view(), name="service-account-detail"),
    path(
        "service-accounts/<int:pk>/disable/",
        key_views.ServiceAccountDisableView.as_view(),
        name="service-account-disable",
    ),
    path("service-accounts/<int:pk>/keys/new/", key_views.KeyCreateView.as_view(), name="service-account-key-create"),
    path("team-quotas/", key_views.TeamQuotaView.as_view(), name="team-quotas"),
]
