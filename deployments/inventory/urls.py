from django.urls import path

from deployments.inventory import views

urlpatterns = [
    path("", views.HostListView.as_view(), name="hosts"),
    path("hosts/new/", views.HostCreateView.as_view(), name="host-create"),
    path("hosts/<int:pk>/", views.HostDetailView.as_view(), name="host-detail"),
    path("hosts/<int:pk>/edit/", views.HostEditView.as_view(), name="host-edit"),
    path("hosts/<int:pk>/gpus/new/", views.GpuCreateView.as_view(), name="gpu-create"),
    path("gpus/<int:pk>/edit/", views.GpuEditView.as_view(), name="gpu-edit"),
    path("sizing/", views.SizingView.as_view(), name="sizing"),
]
