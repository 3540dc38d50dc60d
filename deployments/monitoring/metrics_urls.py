"""Routes of deployments/monitoring (metrics)."""

urlpatterns: list = []
