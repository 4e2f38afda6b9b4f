-- When the engine fired an incident's timers outside an accepted input event (a due timer, or the
-- overdue firing done while rejecting an event). With the event log this makes replay exact: a late
-- event applied after a breach fired live must not un-breach the clock on replay.
CREATE TABLE timer_firings (
    incident_id     text        NOT NULL,
    fired_at        timestamptz NOT NULL,
    kafka_partition integer     NOT NULL,
    PRIMARY KEY (incident_id, fired_at)
);
