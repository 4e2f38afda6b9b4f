INSERT INTO outbox (kafka_partition, message_count, messages) VALUES ($1, $2, $3)
