"""The tamper-evident audit log. `audit.record(...)` is the one way to write an event."""


def record(**kwargs):
    """Record an audit event; see audit.recorder.record (imported lazily: apps may not be ready)."""
    from audit.recorder import record as _record

    return _record(**kwargs)
