-- Everything of a batch that is not COPYed, in one statement: each round trip of a batch's
-- transaction waits for the Postgres backend to be scheduled, which on a busy machine costs more
-- than the work. Data-modifying CTEs all run, on disjoint rows; the caller checks the counts.
--  $1-$4   offsets: topic, partition, next offset, offset the batch started from (fencing: a row
--          that moved past it is left alone, and the caller raises OffsetConflict)
--  $5-$10  existing incidents: id, state, seq, partition, updated_at, body (JSON text)
--  $11     incidents without a pending timer any more
--  $12-$15 timers armed: incident id, partition, due_at, trace context (JSON text)
--  $16-$18 timer firings outside an event: incident id, moment, partition (with $28-$29: the
--          horizons they fired under, until and breach until)
--  $19-$21 outbox rows: input partition, message count, messages
--  $22     the consumer group; $23 outbox rows the relay has sent (deleted here: no transaction of
--          their own)
--  $24-$26 fencing: the input topic, every partition the batch touches, the epoch it was decided
--          under (0: never claimed). `held` locks the owner rows it matched (FOR SHARE, in partition
--          order, as `claim` updates them): a claim waits for this transaction, and this statement
--          waits for a claim in progress and then sees its new epoch. The caller refuses the batch
--          unless every partition matched.
--  $27     the seq each existing incident's decisions started from (NULL: unconditional); an
--          update whose row moved on is skipped, and the caller refuses the batch
--  $28-$29 the horizons of the timer firings ($16-$18)
WITH held AS (
    SELECT o.kafka_partition
    FROM partition_owners AS o
    JOIN unnest($25::int[], $26::bigint[]) AS f(kafka_partition, epoch)
        ON o.kafka_partition = f.kafka_partition AND o.epoch = f.epoch
    WHERE o.group_id = $22 AND o.topic = $24
    ORDER BY o.kafka_partition
    FOR SHARE OF o
), unclaimed AS (
    SELECT f.kafka_partition
    FROM unnest($25::int[], $26::bigint[]) AS f(kafka_partition, epoch)
    WHERE f.epoch = 0 AND NOT EXISTS (
        SELECT 1 FROM partition_owners AS o
        WHERE o.group_id = $22 AND o.topic = $24 AND o.kafka_partition = f.kafka_partition)
), offsets AS (
    INSERT INTO consumer_offsets AS c (group_id, topic, kafka_partition, next_offset)
    SELECT $22, u.topic, u.kafka_partition, u.next_offset
    FROM unnest($1::text[], $2::int[], $3::bigint[]) AS u(topic, kafka_partition, next_offset)
    ON CONFLICT (group_id, topic, kafka_partition) DO UPDATE
        SET next_offset = EXCLUDED.next_offset
        WHERE c.next_offset <= (
            SELECT e.expected FROM unnest($1::text[], $2::int[], $4::bigint[]) AS e(topic, kafka_partition, expected)
            WHERE e.topic = c.topic AND e.kafka_partition = c.kafka_partition)
    RETURNING 1
), changed AS (
    -- only what an event can change: policy, severity, region and reported_at are fixed at report
    UPDATE incidents AS i
    SET state = u.state, seq = u.seq, kafka_partition = u.kafka_partition, updated_at = u.updated_at,
        body = u.body::json
    FROM unnest($5::text[], $6::text[], $7::int[], $8::int[], $9::timestamptz[], $10::text[], $27::int[])
         AS u(incident_id, state, seq, kafka_partition, updated_at, body, decided_from)
    WHERE i.incident_id = u.incident_id AND (u.decided_from IS NULL OR i.seq = u.decided_from)
    RETURNING 1
), gone AS (
    DELETE FROM timers WHERE incident_id = ANY($11::text[])
), armed AS (
    INSERT INTO timers (incident_id, kafka_partition, due_at, trace_context)
    SELECT u.incident_id, u.kafka_partition, u.due_at, u.trace_context::jsonb
    FROM unnest($12::text[], $13::int[], $14::timestamptz[], $15::text[])
         AS u(incident_id, kafka_partition, due_at, trace_context)
    ON CONFLICT (incident_id) DO UPDATE
        SET kafka_partition = EXCLUDED.kafka_partition, due_at = EXCLUDED.due_at,
            trace_context = EXCLUDED.trace_context
), fired AS (
    INSERT INTO timer_firings (incident_id, fired_at, kafka_partition, fire_until, breach_until)
    SELECT * FROM unnest($16::text[], $17::timestamptz[], $18::int[], $28::timestamptz[], $29::timestamptz[])
    ON CONFLICT DO NOTHING
), queued AS (
    INSERT INTO outbox (kafka_partition, message_count, messages)
    SELECT * FROM unnest($19::int[], $20::int[], $21::bytea[])
    RETURNING id, kafka_partition
), sent AS (
    DELETE FROM outbox WHERE id = ANY($23::bigint[])
)
SELECT (SELECT count(*) FROM held) + (SELECT count(*) FROM unclaimed) AS fenced,
       (SELECT count(*) FROM offsets) AS offsets,
       (SELECT count(*) FROM changed) AS changed,
       (SELECT coalesce(array_agg(id ORDER BY kafka_partition), '{}') FROM queued) AS outbox_ids,
       (SELECT coalesce(array_agg(kafka_partition ORDER BY kafka_partition), '{}') FROM queued)
           AS outbox_partitions
