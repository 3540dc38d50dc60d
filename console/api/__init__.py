"""The REST API under /api/v1/: plumbing (auth, errors, pagination, base viewset) and console endpoints."""
