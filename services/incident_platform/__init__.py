"""Plumbing shared by the engine and the services beside it (design §7b).

Kafka client set-up, the PostgreSQL pool and migrations, OpenTelemetry providers and trace context,
JSON logs and the settings every service has. No domain logic and no service's internals: each
service (``incident_engine``, ``incident_intake``, ``incident_notifier``, …) builds on this package
and on ``incident_contracts``, never on another service.
"""
