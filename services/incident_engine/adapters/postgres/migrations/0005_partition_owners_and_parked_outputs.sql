-- Fencing: who owns each input partition. A replica bumps the epoch of the partitions it is assigned
-- (`claim`, before it reads their offsets and timers); every batch carries the epochs it was decided
-- under, and its transaction is refused when any of them is stale. This covers what the offsets alone
-- do not: timer-only batches and projection updates of a replica that lost its partitions without
-- knowing (cut off from the group coordinator, still reaching PostgreSQL).
CREATE TABLE partition_owners (
    group_id        text        NOT NULL,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    epoch           bigint      NOT NULL,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, kafka_partition)
);

-- Outputs the broker refused for good (e.g. larger than the topic's max.message.bytes): parked here
-- with the broker's error instead of wedging the relay; the rest of their outbox row goes on.
-- Sweeps never read this table. An operator inspects and re-sends them (README, "Parked outputs").
CREATE TABLE outbox_parked (
    id              bigserial   PRIMARY KEY,
    kafka_partition integer     NOT NULL,  -- the input partition that produced it
    topic           text        NOT NULL,
    key             bytea,
    event_id        text        NOT NULL,
    headers         jsonb,
    payload         bytea       NOT NULL,
    error           text        NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now()
);
