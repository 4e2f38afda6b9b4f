-- Existing incidents: only what an event can change (policy, severity, region and the report time
-- are fixed when the incident is reported). JSON arrives as text (serialized by orjson), cast once.
UPDATE incidents AS i
SET state = u.state, seq = u.seq, kafka_partition = u.kafka_partition, updated_at = u.updated_at,
    body = u.body::json
FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::timestamptz[], $6::text[])
     AS u(incident_id, state, seq, kafka_partition, updated_at, body)
WHERE i.incident_id = u.incident_id
