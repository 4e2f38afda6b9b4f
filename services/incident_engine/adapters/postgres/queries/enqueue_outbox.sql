INSERT INTO outbox (kafka_partition, topic, key, event_id, payload, headers)
SELECT u.kafka_partition, u.topic, u.key, u.event_id, u.payload, u.headers::jsonb
FROM unnest($1::int[], $2::text[], $3::bytea[], $4::text[], $5::bytea[], $6::text[])
     AS u(kafka_partition, topic, key, event_id, payload, headers)
