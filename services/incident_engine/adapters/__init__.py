"""Adapters around the domain: Kafka, Postgres, telemetry, in-memory twins."""
