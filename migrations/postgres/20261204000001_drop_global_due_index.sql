-- The engine claims per queue (webhook_requests_queue_due, whose predicate is
-- the same, also serves the pending count of /metrics); nothing in the
-- server reads pending deliveries in one global next_attempt_at order any
-- more (Store::claim_due is kept for tests). This index cost every Dispatch
-- an index insert, always into the same rightmost leaf (every row of a batch,
-- and of concurrent batches, has the same next_attempt_at), and every
-- retry (a new next_attempt_at) another. pgbench running Dispatch's
-- batched INSERT at 14 rows, alternating, three times each: about 1,606
-- statements/s without it, 1,554 with it (3 %).
DROP INDEX IF EXISTS webhook_requests_due;
