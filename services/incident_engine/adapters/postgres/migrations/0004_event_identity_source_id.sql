-- CloudEvents identify an event by (source, id): two channels that both number their events from 1
-- send different events, and the second must not be dropped as a repeat of the first. The log's
-- uniqueness moves from `event_id` alone to the pair (event_id first, so a look-up by id alone still
-- uses the index). The contract bounds both to 256 characters (incident_contracts/bounds.py), which
-- keeps an index entry under Postgres' 2704-byte B-tree limit whatever the characters.
ALTER TABLE event_log ADD CONSTRAINT event_log_event_id_source_key UNIQUE (event_id, source);
ALTER TABLE event_log DROP CONSTRAINT event_log_event_id_key;
