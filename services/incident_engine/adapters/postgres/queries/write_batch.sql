-- A whole batch in one statement, run outside any explicit transaction (its own, committed when it
-- ends): one round trip. Each round trip of a batch waits for the engine's event loop, busy deciding
-- the next batch, and for the Postgres backend to be scheduled; on a busy machine that cost more than
-- the work. Data-modifying CTEs all run, on disjoint rows. `gate` checks the fence, the offsets and
-- the projection seqs first; the rows that could collide with another writer's (the event log, new
-- incidents) are inserted only when it passes, and the final SELECT raises EB409 (migration 0012)
-- when it does not, which rolls back everything the statement wrote.
--  $1-$4   offsets: topic, partition, next offset, offset the batch started from (fencing: a row
--          that moved past it is left alone, and the batch is refused)
--  $5      existing incidents (engine_incident_change, migration 0013): id, state, seq, partition,
--          updated_at, body (JSON text), and the seq the batch's decisions started from (NULL:
--          unconditional); an update whose row moved on is skipped, and the batch is refused
--  $6      incidents without a pending timer any more
--  $7      timers armed (engine_timer_armed): incident id, partition, due_at, trace context (JSON text)
--  $8-$10  timer firings outside an event: incident id, moment, partition (with $19-$20: the
--          horizons they fired under, until and breach until)
--  $11-$13 outbox rows: input partition, message count, messages
--  $14     the consumer group; $15 outbox rows the relay has sent (deleted here)
--  $16-$18 fencing: the input topic, every partition the batch touches, the epoch it was decided
--          under (0: never claimed). `held` locks the owner rows it matched (FOR SHARE, in partition
--          order, as `claim` updates them): a claim waits for this statement, and this statement
--          waits for a claim in progress and then sees its new epoch. The batch is refused unless
--          every partition matched.
--  $19-$20 the horizons of the timer firings ($8-$10)
--  $21     new events (engine_logged_event): incident id, seq, event id, type, source, event time,
--          processed at (NULL: $23), partition, offset, envelope (JSON text), trace context (JSON text)
--  $22     new incidents (engine_incident_new): id, state, policy, severity, region, seq, partition,
--          reported_at, updated_at, body (JSON text)
--  $23     the batch's processing moment, shared by its events
WITH held AS (
    SELECT o.kafka_partition
    FROM partition_owners AS o
    JOIN unnest($17::int[], $18::bigint[]) AS f(kafka_partition, epoch)
        ON o.kafka_partition = f.kafka_partition AND o.epoch = f.epoch
    WHERE o.group_id = $14 AND o.topic = $16
    ORDER BY o.kafka_partition
    FOR SHARE OF o
), unclaimed AS (
    SELECT f.kafka_partition
    FROM unnest($17::int[], $18::bigint[]) AS f(kafka_partition, epoch)
    WHERE f.epoch = 0 AND NOT EXISTS (
        SELECT 1 FROM partition_owners AS o
        WHERE o.group_id = $14 AND o.topic = $16 AND o.kafka_partition = f.kafka_partition)
), offsets AS (
    INSERT INTO consumer_offsets AS c (group_id, topic, kafka_partition, next_offset)
    SELECT $14, u.topic, u.kafka_partition, u.next_offset
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
    FROM unnest($5::engine_incident_change[]) AS u
    WHERE i.incident_id = u.incident_id AND (u.decided_from IS NULL OR i.seq = u.decided_from)
    RETURNING 1
), gone AS (
    DELETE FROM timers WHERE incident_id = ANY($6::text[])
), armed AS (
    INSERT INTO timers (incident_id, kafka_partition, due_at, trace_context)
    SELECT u.incident_id, u.kafka_partition, u.due_at, u.trace_context::jsonb
    FROM unnest($7::engine_timer_armed[]) AS u
    ON CONFLICT (incident_id) DO UPDATE
        SET kafka_partition = EXCLUDED.kafka_partition, due_at = EXCLUDED.due_at,
            trace_context = EXCLUDED.trace_context
), fired AS (
    INSERT INTO timer_firings (incident_id, fired_at, kafka_partition, fire_until, breach_until)
    SELECT * FROM unnest($8::text[], $9::timestamptz[], $10::int[], $19::timestamptz[], $20::timestamptz[])
    ON CONFLICT DO NOTHING
), queued AS (
    INSERT INTO outbox (kafka_partition, message_count, messages)
    SELECT * FROM unnest($11::int[], $12::int[], $13::bytea[])
    RETURNING id, kafka_partition
), sent AS (
    DELETE FROM outbox WHERE id = ANY($15::bigint[])
), gate AS (
    SELECT f.fenced, o.offsets, c.changed,
           f.fenced = cardinality($17::int[]) AND o.offsets = cardinality($1::text[])
               AND c.changed = cardinality($5::engine_incident_change[]) AS ok
    FROM (SELECT (SELECT count(*) FROM held) + (SELECT count(*) FROM unclaimed) AS fenced) AS f,
         (SELECT count(*) AS offsets FROM offsets) AS o,
         (SELECT count(*) AS changed FROM changed) AS c
), logged AS (
    INSERT INTO event_log (incident_id, seq, event_id, type, source, event_time, processed_at,
                           kafka_partition, kafka_offset, envelope, trace_context)
    SELECT u.incident_id, u.seq, u.event_id, u.type, u.source, u.event_time,
           coalesce(u.processed_at, $23::timestamptz),
           u.kafka_partition, u.kafka_offset, u.envelope::json, u.trace_context::jsonb
    FROM unnest($21::engine_logged_event[]) AS u
    WHERE (SELECT ok FROM gate)
), created AS (
    -- a new incident that exists after all (another engine's zombie batch, fenced off above) is a
    -- conflict like the others; one that still collides fails the statement on the primary key
    INSERT INTO incidents (incident_id, state, policy, severity, region, seq, kafka_partition,
                           reported_at, updated_at, body)
    SELECT u.incident_id, u.state, u.policy, u.severity, u.region, u.seq, u.kafka_partition,
           u.reported_at, u.updated_at, u.body::json
    FROM unnest($22::engine_incident_new[]) AS u
    WHERE (SELECT ok FROM gate)
)
SELECT CASE WHEN g.ok THEN false
            ELSE engine_batch_refused(g.fenced, cardinality($17::int[]), g.offsets, cardinality($1::text[]),
                                      g.changed, cardinality($5::engine_incident_change[]))
       END AS refused,
       (SELECT coalesce(array_agg(id ORDER BY kafka_partition), '{}') FROM queued) AS outbox_ids,
       (SELECT coalesce(array_agg(kafka_partition ORDER BY kafka_partition), '{}') FROM queued)
           AS outbox_partitions
FROM gate AS g
