SELECT id, kafka_partition, topic, key, event_id, payload, headers
FROM outbox
WHERE kafka_partition = ANY($1::int[])
ORDER BY id
LIMIT $2
