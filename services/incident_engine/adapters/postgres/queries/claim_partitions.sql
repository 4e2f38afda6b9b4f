-- Take ownership of input partitions: bump (or start) their epochs, in partition order (the order
-- in which write_batch.sql locks them: no deadlock between a claim and a batch).
INSERT INTO partition_owners AS o (group_id, topic, kafka_partition, epoch)
SELECT $1, $2, p.kafka_partition, 1
FROM unnest($3::int[]) AS p(kafka_partition)
ORDER BY p.kafka_partition
ON CONFLICT (group_id, topic, kafka_partition) DO UPDATE
    SET epoch = o.epoch + 1, claimed_at = now()
RETURNING kafka_partition, epoch
