from django.urls import path

from deployments.registry import copy_views, views

urlpatterns = [
    path("", views.ModelListView.as_view(), name="models"),
    path("add/", views.ModelAddView.as_view(), name="model-add"),
    path("import/", views.ModelImportView.as_view(), name="model-import"),
    path("gc/", views.ModelGcView.as_view(), name="models-gc"),
    path("sources/", views.SourcesView.as_view(), name="model-sources"),
    path("sources/endpoints/", views.EndpointAllowView.as_view(), name="endpoint-allow"),
    path("sources/endpoints/<int:pk>/remove/", views.EndpointRemoveView.as_view(), name="endpoint-remove"),
    path("<int:pk>/", views.ModelDetailView.as_view(), name="model-detail"),
    path("<int:pk>/cancel/", views.ModelCancelView.as_view(), name="model-cancel"),
    path("<int:pk>/delete/", views.ModelDeleteView.as_view(), name="model-delete"),
    path("<int:pk>/copy/", copy_views.ModelCopyView.as_view(), name="model-copy"),
]
