-- The event log and everything derived from it, written in one transaction per batch.
-- Documents the engine writes on its hot path and reads whole are `json` (validated text, no
-- conversion on write); `->`/`->>` work on them as on jsonb.

-- Append-only log of accepted input events (pyeventsourcing-style: (incident_id, seq) is the
-- optimistic-concurrency key; a second writer of the same seq fails instead of forking history).
CREATE TABLE event_log (
    incident_id     text        NOT NULL,
    seq             integer     NOT NULL,
    event_id        text        NOT NULL,
    type            text        NOT NULL,
    source          text        NOT NULL,
    event_time      timestamptz NOT NULL,
    processed_at    timestamptz NOT NULL,  -- the engine clock when applied: replay uses it as `now`
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    envelope        json        NOT NULL,  -- the CloudEvent as received (structured form)
    trace_context   jsonb,                 -- W3C traceparent/tracestate of the producer
    PRIMARY KEY (incident_id, seq),
    CONSTRAINT event_log_event_id_key UNIQUE (event_id)
);

CREATE FUNCTION event_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event_log is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER event_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION event_log_is_append_only();

-- Current state of each incident (a projection of the log; `incidents replay` rebuilds it).
CREATE TABLE incidents (
    incident_id     text        PRIMARY KEY,
    state           text        NOT NULL,
    policy          text        NOT NULL,
    severity        text        NOT NULL,
    region          text        NOT NULL,
    seq             integer     NOT NULL,
    kafka_partition integer     NOT NULL,
    reported_at     timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    body            json        NOT NULL   -- Incident.to_json(): clocks and pending timers
);
CREATE INDEX incidents_state_idx ON incidents (state, severity);

-- Durable timers: one row per incident with a pending SLA firing, the earliest due moment.
-- Each engine loads the rows of its assigned partitions into an in-memory heap.
CREATE TABLE timers (
    incident_id     text        PRIMARY KEY,
    kafka_partition integer     NOT NULL,
    due_at          timestamptz NOT NULL,
    trace_context   jsonb                  -- the trace that armed it, for a linked span when it fires
);
CREATE INDEX timers_partition_due_idx ON timers (kafka_partition, due_at);

-- Consumed input offsets, committed with the effects of the batch that consumed them.
CREATE TABLE consumer_offsets (
    group_id        text        NOT NULL,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    next_offset     bigint      NOT NULL,
    PRIMARY KEY (group_id, topic, kafka_partition)
);

-- Transactional outbox: the outputs of one batch and input partition in one row, waiting for the
-- relay; deleted once Kafka acknowledged every message of the row. One row per batch rather than
-- per output keeps the outbox cheap when an event yields several outputs. `messages` is a simple
-- length-prefixed framing of (topic, key, event id, headers JSON, payload) per message, in order.
CREATE TABLE outbox (
    id              bigserial   PRIMARY KEY,
    kafka_partition integer     NOT NULL,  -- the input partition that produced it (its relay owner)
    message_count   integer     NOT NULL,
    messages        bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_partition_idx ON outbox (kafka_partition, id);
