from django.urls import path

from deployments.finetune import views

urlpatterns = [
    path("", views.FinetuneListView.as_view(), name="finetunes"),
    path("new/", views.FinetuneCreateView.as_view(), name="finetune-create"),
    path("<int:pk>/cancel/", views.FinetuneCancelView.as_view(), name="finetune-cancel"),
    path("<int:pk>/resume/", views.FinetuneResumeView.as_view(), name="finetune-resume"),
    path("adapters/<int:pk>/merge/", views.AdapterMergeView.as_view(), name="adapter-merge"),
    path("adapters/<int:pk>/deploy/", views.AdapterDeployView.as_view(), name="adapter-deploy"),
]
