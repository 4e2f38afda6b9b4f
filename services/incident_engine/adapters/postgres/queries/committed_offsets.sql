SELECT kafka_partition, next_offset
FROM consumer_offsets
WHERE group_id = $1 AND topic = $2 AND kafka_partition = ANY($3::int[])
