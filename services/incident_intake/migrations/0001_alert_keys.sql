-- What the intake knows of each alert key of an integration (an Alertmanager group or fingerprint,
-- a PagerDuty dedup key): its current incident and whether it is open. Rows are locked while the
-- events of a notification go to Kafka, so replicas deciding the same key take turns.
CREATE TABLE IF NOT EXISTS intake_alert_keys (
    integration   text        NOT NULL,
    alert_key     text        NOT NULL,
    incident_id   text,
    open          boolean     NOT NULL DEFAULT false,
    acknowledged  boolean     NOT NULL DEFAULT false,
    digest        text        NOT NULL DEFAULT '',
    updates       integer     NOT NULL DEFAULT 0,
    generation    integer     NOT NULL DEFAULT 0,
    opened_at     timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, alert_key)
);
CREATE INDEX IF NOT EXISTS intake_alert_keys_incident ON intake_alert_keys (incident_id);
