-- The rows of a batch travel as one array of a composite type per table (issue 17) instead of one
-- array per column. asyncpg checks every element of an array parameter against abstract base
-- classes before it encodes it (Python-level calls): an event row spread over eleven column arrays
-- paid one or two for each field, a composite row pays four in all. PostgreSQL, too, decodes an array of
-- records faster than eleven arrays. Measured batch by batch against the column arrays
-- (`bench_write_cost.py --against 8dac493`): 15.1 instead of 16.6 µs of client CPU and 38.4 instead
-- of 41.2 µs of wall time per acknowledgement's commit.
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
