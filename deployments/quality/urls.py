from django.urls import path

from deployments.quality import variants_views, views

urlpatterns = [
    path("", views.QualityListView.as_view(), name="quality"),
    path("quantize/", views.QuantizeCreateView.as_view(), name="quantize-create"),
    path("evaluate/", views.EvaluateCreateView.as_view(), name="evaluate-create"),
    path("variants/<int:pk>/", variants_views.VariantsView.as_view(), name="model-variants"),
    path("<int:pk>/cancel/", views.QualityCancelView.as_view(), name="quality-cancel"),
]
