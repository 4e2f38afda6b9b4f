-- What a batch needs before deciding: which input events, by (source, id), were applied already
-- (body NULL), and the stored state of the incidents it touches that are not cached.
SELECT l.source, l.event_id AS id, NULL::json AS body
FROM unnest($1::text[], $2::text[]) AS k(source, event_id)
JOIN event_log AS l ON l.event_id = k.event_id AND l.source = k.source
UNION ALL
SELECT NULL, incident_id, body FROM incidents WHERE incident_id = ANY($3::text[])
