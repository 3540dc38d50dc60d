"""Routes of deployments/monitoring (health)."""

urlpatterns: list = []
