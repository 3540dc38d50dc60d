"""Services: the writes of the console app (keyword-only, typed, atomic)."""
