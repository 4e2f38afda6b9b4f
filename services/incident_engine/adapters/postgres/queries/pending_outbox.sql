SELECT id, kafka_partition, messages
FROM outbox
WHERE kafka_partition = ANY($1::int[])
ORDER BY id
LIMIT $2
