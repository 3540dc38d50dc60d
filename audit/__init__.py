"""The tamper-evident audit log (built by the audit issue)."""
