-- The rows of a batch travel as one array of a composite type per table (issue 17) instead of one
-- array per column. asyncpg checks every element of an array parameter against three abstract base
-- classes before it encodes it (a Python-level call each): with a column per array an event row
-- cost eleven such elements, with a row per element it costs one. Measured in alternating runs of
-- `bench_engine.py --workload ack-heavy`: per acknowledgement 50 µs of engine CPU instead of 54, and
-- 25 µs of PostgreSQL's instead of 29 (its array of records decodes faster than eleven arrays).
-- The field order is the order in which `PostgresStore.commit` builds its tuples (a contract test
-- reads every column back). Never ALTER or DROP these types under running replicas: asyncpg caches
-- a type's fields per connection; a new layout is a new type, used by a new statement.
CREATE TYPE engine_logged_event AS (
    incident_id text, seq integer, event_id text, type text, source text, event_time timestamptz,
    processed_at timestamptz, kafka_partition integer, kafka_offset bigint, envelope text,
    trace_context text
);
CREATE TYPE engine_incident_change AS (
    incident_id text, state text, seq integer, kafka_partition integer, updated_at timestamptz,
    body text, decided_from integer
);
CREATE TYPE engine_incident_new AS (
    incident_id text, state text, policy text, severity text, region text, seq integer,
    kafka_partition integer, reported_at timestamptz, updated_at timestamptz, body text
);
CREATE TYPE engine_timer_armed AS (
    incident_id text, kafka_partition integer, due_at timestamptz, trace_context text
);
