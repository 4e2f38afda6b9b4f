-- $5 is the offset the batch started from (NULL: the partition had no stored offset yet).
INSERT INTO consumer_offsets AS c (group_id, topic, kafka_partition, next_offset)
VALUES ($1, $2, $3, $4)
ON CONFLICT (group_id, topic, kafka_partition) DO UPDATE
    SET next_offset = EXCLUDED.next_offset
    WHERE $5::bigint IS NULL OR c.next_offset <= $5::bigint
RETURNING true
