"""Services: the writes of the deployments app (keyword-only, typed, atomic, audited)."""
