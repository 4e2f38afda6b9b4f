-- JSON arrives as text (already serialized by orjson) and is cast here, once.
INSERT INTO event_log (incident_id, seq, event_id, type, source, event_time, processed_at,
                       kafka_partition, kafka_offset, envelope, trace_context)
SELECT u.incident_id, u.seq, u.event_id, u.type, u.source, u.event_time, u.processed_at,
       u.kafka_partition, u.kafka_offset, u.envelope::json, u.trace_context::jsonb
FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
            $7::timestamptz[], $8::int[], $9::bigint[], $10::text[], $11::text[])
     AS u(incident_id, seq, event_id, type, source, event_time, processed_at, kafka_partition,
          kafka_offset, envelope, trace_context)
