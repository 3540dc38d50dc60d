from django.urls import path

from deployments.serving import approvals_views as views

urlpatterns = [
    path("", views.ApprovalListView.as_view(), name="approvals"),
    path("<int:pk>/", views.ApprovalDetailView.as_view(), name="approval-detail"),
    path("<int:pk>/approve/", views.ApprovalApproveView.as_view(), name="approval-approve"),
    path("<int:pk>/reject/", views.ApprovalRejectView.as_view(), name="approval-reject"),
]
