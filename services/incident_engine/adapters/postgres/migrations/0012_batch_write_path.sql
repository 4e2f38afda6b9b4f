-- A batch is written by one statement outside any explicit transaction (issue 17): one round trip
-- instead of BEGIN, the statement, two COPYs and COMMIT, each of which waited for the engine's event
-- loop to be free of the next batch. The statement refuses itself when its checks fail (fencing
-- epochs, offsets, projection seqs): this raises, and everything it wrote is rolled back with it.
-- SQLSTATE EB409 is the engine's own (a conflict, never the input's fault); DETAIL is JSON counts.
CREATE FUNCTION engine_batch_refused(fenced bigint, fence bigint, offsets bigint, offsets_expected bigint,
                                     changed bigint, changed_expected bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'batch refused: another writer moved on since it was decided'
        USING ERRCODE = 'EB409',
              DETAIL = json_build_object(
                  'fenced', fenced, 'fence', fence, 'offsets', offsets, 'offsets_expected', offsets_expected,
                  'changed', changed, 'changed_expected', changed_expected)::text;
END $$;

-- An acknowledgement updates its incident's projection and its timer row. Neither update could be
-- HOT (heap-only: no new index entries, the old version pruned in place) because each changes an
-- indexed column: `state` (incidents_state_idx) and `due_at` (timers_partition_due_idx). Nothing
-- needs those columns indexed: the console's open incidents (`state <> 'restored'`) and the read
-- API's filters walk incidents_reported_idx in the order they page; the engine loads timers by
-- partition. Without them, and with room left in each page for the next version of its rows, both
-- updates are HOT: a quarter less PostgreSQL time per acknowledgement (benchmarks/bench_write_cost.py).
DROP INDEX IF EXISTS incidents_state_idx;
DROP INDEX IF EXISTS timers_partition_due_idx;
CREATE INDEX IF NOT EXISTS timers_partition_idx ON timers (kafka_partition);
ALTER TABLE incidents SET (fillfactor = 70);
ALTER TABLE timers SET (fillfactor = 70);
