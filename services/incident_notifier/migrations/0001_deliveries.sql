-- One row per (output event, destination): the durable retry schedule of the notifier.
-- `due_at` is also the lease: a worker that claims a row moves it to now() + lease, so a notifier
-- killed mid-attempt leaves the row to be taken again once the lease is over.
CREATE TABLE IF NOT EXISTS notifier_deliveries (
    output_id    text        NOT NULL,
    destination  text        NOT NULL,
    incident_id  text        NOT NULL,
    event_type   text        NOT NULL,
    event_time   timestamptz NOT NULL,
    event        jsonb       NOT NULL,
    trace        jsonb       NOT NULL DEFAULT '{}',
    status       text        NOT NULL DEFAULT 'pending',  -- pending | delivered | dead
    attempts     integer     NOT NULL DEFAULT 0,
    due_at       timestamptz NOT NULL DEFAULT now(),
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (output_id, destination)
);
CREATE INDEX IF NOT EXISTS notifier_deliveries_due ON notifier_deliveries (destination, due_at)
    WHERE status = 'pending';
