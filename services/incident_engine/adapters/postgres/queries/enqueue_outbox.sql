-- One row per input partition of the batch; the ids come back so the relay can send from memory.
INSERT INTO outbox (kafka_partition, message_count, messages)
SELECT * FROM unnest($1::int[], $2::int[], $3::bytea[])
RETURNING id, kafka_partition
