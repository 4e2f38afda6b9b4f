-- What a batch needs before deciding: which input ids were applied already (body NULL), and the
-- stored state of the incidents it touches that are not cached.
SELECT event_id AS id, NULL::json AS body FROM event_log WHERE event_id = ANY($1::text[])
UNION ALL
SELECT incident_id, body FROM incidents WHERE incident_id = ANY($2::text[])
