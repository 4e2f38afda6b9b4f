-- GET /incidents pages on (reported_at, incident_id), which never change: paging on the last update
-- skipped an incident that changed while a client walked the pages. Nothing orders by updated_at
-- any more, and its index cost an index write on every projection update: dropped.
CREATE INDEX IF NOT EXISTS incidents_reported_idx ON incidents (reported_at, incident_id);
DROP INDEX IF EXISTS incidents_updated_idx;
