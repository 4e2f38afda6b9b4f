INSERT INTO timers (incident_id, kafka_partition, due_at, trace_context)
SELECT u.incident_id, u.kafka_partition, u.due_at, u.trace_context::jsonb
FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::text[])
     AS u(incident_id, kafka_partition, due_at, trace_context)
ON CONFLICT (incident_id) DO UPDATE
    SET kafka_partition = EXCLUDED.kafka_partition, due_at = EXCLUDED.due_at,
        trace_context = EXCLUDED.trace_context
