"""Inventory, model registry, deployments and jobs (built by later issues)."""
