-- The horizons a timer firing happened under (issue: in time means in time). The engine fires on
-- event time: what was due strictly before the partition's watermark (`fire_until`), breaches and
-- failover orders only once their grace had passed too (`breach_until`). Replay needs both to be
-- exact. Rows from before this migration have neither: everything due by `fired_at` fired then.
ALTER TABLE timer_firings
    ADD COLUMN fire_until   timestamptz,
    ADD COLUMN breach_until timestamptz;
