SELECT incident_id, seq, event_id, type, source, event_time, processed_at, kafka_partition,
       kafka_offset, envelope, trace_context
FROM event_log
WHERE $1::text IS NULL OR incident_id = $1
ORDER BY incident_id, seq
