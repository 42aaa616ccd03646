-- A claim's lease gets a column of its own. Until now a claim pushed
-- next_attempt_at forward by the lease; next_attempt_at is indexed (the
-- queue and due indexes), so every claim wrote a new row version with new
-- entries in every index of the table (none of the updates were HOT), and
-- left a dead version behind. Now a claim sets lease_id and leased_until,
-- which no index covers, and leaves next_attempt_at alone: Postgres makes
-- it a heap-only (HOT) update, no index entries at all, whenever the row's
-- page has room for the new version. A claimed row is claimable again once
-- leased_until has passed (its process died), as before.
-- A lease taken by an earlier version has no leased_until: it ended at
-- next_attempt_at, which the claim checks anyway (COALESCE to -infinity).
ALTER TABLE webhook_requests ADD COLUMN leased_until TIMESTAMPTZ;

-- A day table created but not yet attached (maintenance stopped between the
-- two steps) must match the parent before it can be attached.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN
        SELECT c.relname::text AS name FROM pg_class c
        WHERE c.relkind = 'r' AND c.relname ~ '^webhook_requests_p[0-9]{8}$'
          AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
    LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN IF NOT EXISTS leased_until TIMESTAMPTZ', p.name);
        EXECUTE format('ALTER TABLE %I SET (fillfactor = 45)', p.name);
    END LOOP;
END $$;

-- Room on each page for the claims' new versions: rows are inserted in
-- order and claimed in order, so a page's rows are often claimed by one
-- statement, and every one of them needs room for its new version beside
-- the old (until the claim commits, both are live). A page filled to 45 %
-- has that room with some to spare for line pointers and alignment; at 50 %
-- 13 of 200 claims found none (tests/api/plans.rs). The cost is disk: a
-- delivery row (no body; bodies are in webhook_messages) takes about twice
-- the space. New day partitions are created with the same setting
-- (maintenance.rs); pages already written keep theirs. A day whose detach
-- was interrupted cannot be altered, and is on its way out anyway.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN
        SELECT c.relname::text AS name
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class t ON t.oid = i.inhparent
        WHERE t.relname = 'webhook_requests' AND NOT i.inhdetachpending
    LOOP
        EXECUTE format('ALTER TABLE %I SET (fillfactor = 45)', p.name);
    END LOOP;
END $$;
