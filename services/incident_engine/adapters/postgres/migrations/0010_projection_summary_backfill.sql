-- Incidents reported before the engine kept the report's summary and reporting source (the outputs
-- people read carry them, issue 14): fill both in from each incident's logged report, so the live
-- engine's outputs, replay and `replay --check` agree for them too. A projection the engine re-saved
-- after the upgrade holds them as null: filled in as well. An incident whose report is no longer in
-- the table (archived) keeps null; `replay --check` reads that as "not kept".
UPDATE incidents AS i
SET body = (i.body::jsonb || jsonb_build_object(
        'summary', r.envelope -> 'data' -> 'summary',
        'source', to_jsonb(r.source)))::json
FROM event_log AS r
WHERE r.incident_id = i.incident_id
  AND r.type = 'incident.reported'
  AND coalesce(i.body::jsonb -> 'summary', 'null'::jsonb) = 'null'::jsonb
  AND coalesce(i.body::jsonb -> 'source', 'null'::jsonb) = 'null'::jsonb;
