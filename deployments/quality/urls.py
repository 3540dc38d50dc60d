from django.urls import path

from deployments.quality import views

urlpatterns = [
    path("", views.QualityListView.as_view(), name="quality"),
    path("quantize/", views.QuantizeCreateView.as_view(), name="quantize-create"),
    path("evaluate/", views.EvaluateCreateView.as_view(), name="evaluate-create"),
    path("<int:pk>/cancel/", views.QualityCancelView.as_view(), name="quality-cancel"),
]
