"""The incident SLA engine."""
