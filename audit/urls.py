from django.urls import path

from audit import views

urlpatterns = [
    path("", views.AuditEventListView.as_view(), name="audit-events"),
    path("export/", views.AuditExportView.as_view(), name="audit-export"),
]
