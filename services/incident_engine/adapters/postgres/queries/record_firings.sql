INSERT INTO timer_firings (incident_id, fired_at, kafka_partition)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int[])
ON CONFLICT DO NOTHING
