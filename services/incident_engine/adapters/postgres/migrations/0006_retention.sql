-- Retention (issue 11, item 10): `incidents db archive --before M` moves the closed months of the log
-- to compressed JSONL files and deletes them here; the read API pages in index order.
--
-- Why not declarative partitions: a partitioned table's unique indexes must hold the partition key,
-- so UNIQUE (event_id) (and the (source, event_id) key of migration 0004) could no longer be
-- enforced across months, and the COPY of the hot path would have to carry a month column. The log
-- stays one table with its primary key (incident_id, seq) and its event-id uniqueness as they are;
-- a month (the UTC month of an incident's `incident.reported` event time, as `report --month`)
-- leaves by a DELETE of its incidents' rows, which only the archive may do, after their rows are in
-- its file. Autovacuum gives the space back to new rows.

-- The append-only guard lets one thing through: a DELETE in a transaction that set
-- `incidents.archiving` (SET LOCAL, done by the archive command alone). UPDATE and TRUNCATE stay refused.
CREATE OR REPLACE FUNCTION event_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('incidents.archiving', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'event_log is append-only (% refused)', TG_OP;
END $$;

-- GET /incidents sorts by (updated_at, incident_id) descending and pages by keyset on it.
CREATE INDEX IF NOT EXISTS incidents_updated_idx ON incidents (updated_at, incident_id);
