from django.urls import path

from deployments.serving import views

urlpatterns = [
    path("", views.DeploymentListView.as_view(), name="deployments"),
    path("new/", views.DeploymentCreateView.as_view(), name="deployment-create"),
    path("images/", views.ImageListView.as_view(), name="deployment-images"),
    path("images/<int:pk>/remove/", views.ImageRemoveView.as_view(), name="deployment-image-remove"),
    path("<int:pk>/", views.DeploymentDetailView.as_view(), name="deployment-detail"),
    path("<int:pk>/edit/", views.DeploymentEditView.as_view(), name="deployment-edit"),
    path("<int:pk>/launch/", views.DeploymentLaunchView.as_view(), name="deployment-launch"),
    path("<int:pk>/stop/", views.DeploymentStopView.as_view(), name="deployment-stop"),
    path("<int:pk>/restart/", views.DeploymentRestartView.as_view(), name="deployment-restart"),
    path("<int:pk>/rollback/", views.DeploymentRollbackView.as_view(), name="deployment-rollback"),
    path("<int:pk>/delete/", views.DeploymentDeleteView.as_view(), name="deployment-delete"),
    path("<int:pk>/playground/", views.PlaygroundView.as_view(), name="deployment-playground"),
]
