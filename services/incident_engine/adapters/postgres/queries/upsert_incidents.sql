INSERT INTO incidents AS i (incident_id, state, policy, severity, region, seq, kafka_partition,
                            reported_at, updated_at, body)
SELECT u.incident_id, u.state, u.policy, u.severity, u.region, u.seq, u.kafka_partition,
       u.reported_at, u.updated_at, u.body::json
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[],
            $8::timestamptz[], $9::timestamptz[], $10::text[])
     AS u(incident_id, state, policy, severity, region, seq, kafka_partition, reported_at,
          updated_at, body)
ON CONFLICT (incident_id) DO UPDATE
    SET state = EXCLUDED.state, seq = EXCLUDED.seq, kafka_partition = EXCLUDED.kafka_partition,
        updated_at = EXCLUDED.updated_at, body = EXCLUDED.body
