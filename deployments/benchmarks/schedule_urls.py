from django.urls import path

from deployments.benchmarks import schedule_views as views

app_name = "bench_schedules"

urlpatterns = [
    path("deployment/<int:pk>/add/", views.ScheduleCreateView.as_view(), name="create"),
    path("<int:pk>/toggle/", views.ScheduleToggleView.as_view(), name="toggle"),
    path("<int:pk>/delete/", views.ScheduleDeleteView.as_view(), name="delete"),
    path("alerts/<int:pk>/acknowledge/", views.AlertAcknowledgeView.as_view(), name="alert-acknowledge"),
]
