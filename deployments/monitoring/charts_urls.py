"""Routes of deployments/monitoring (charts)."""

urlpatterns: list = []
