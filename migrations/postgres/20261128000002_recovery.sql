-- Redeliver, recover, pause and auto-disable.

-- 'held': created for (or claimed while) its endpoint is paused or disabled.
-- Never claimed; resuming or re-enabling the endpoint makes it pending again.
-- The status check is replaced on the parent and on every day partition
-- (partitions made with LIKE carry their own copy of it).
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conrelid::regclass::text AS rel, conname FROM pg_constraint
        WHERE contype = 'c' AND pg_get_constraintdef(oid) LIKE '%status%'
          AND conrelid = 'webhook_requests'::regclass
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.rel, c.conname);
    END LOOP;
    FOR c IN
        SELECT con.conrelid::regclass::text AS rel, con.conname FROM pg_constraint con
        JOIN pg_inherits i ON i.inhrelid = con.conrelid
        WHERE i.inhparent = 'webhook_requests'::regclass AND con.contype = 'c'
          AND pg_get_constraintdef(con.oid) LIKE '%status%'
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.rel, c.conname);
    END LOOP;
END $$;
ALTER TABLE webhook_requests ADD CONSTRAINT webhook_requests_status
    CHECK (status IN ('pending', 'succeeded', 'failed', 'held'));
-- Held deliveries of an endpoint, in the order they flow when it resumes.
CREATE INDEX webhook_requests_held ON webhook_requests (endpoint_id, created_at, id) WHERE status = 'held';

-- A manual redelivery starts a fresh retry budget after the attempts made
-- so far: manual_from is the attempt count when it began. Attempts numbered
-- above it are marked manual.
ALTER TABLE webhook_requests ADD COLUMN manual_from INTEGER;
ALTER TABLE webhook_attempts ADD COLUMN manual BOOLEAN NOT NULL DEFAULT false;

-- Pause and (automatic) disable. failing_since / consecutive_failures track
-- the current run of failed attempts (reset by a success): the
-- auto-disable rule reads them.
ALTER TABLE endpoints ADD COLUMN paused BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE endpoints ADD COLUMN disabled_reason TEXT;
ALTER TABLE endpoints ADD COLUMN disabled_at TIMESTAMPTZ;
ALTER TABLE endpoints ADD COLUMN failing_since TIMESTAMPTZ;
ALTER TABLE endpoints ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;

-- Long-running recoveries: a row per run, advanced batch by batch (cursor),
-- picked up again after a restart by whichever replica holds its lease.
CREATE TABLE operations (
    id              BIGSERIAL   PRIMARY KEY,
    operation_id    UUID        NOT NULL UNIQUE,
    organization_id UUID        NOT NULL,
    kind            TEXT        NOT NULL,
    -- What to recover (endpoint, category, window) as JSON.
    params          JSONB       NOT NULL,
    -- (created_at, id) of the last delivery looked at; NULL before the first batch.
    cursor_at       TIMESTAMPTZ,
    cursor_id       BIGINT,
    matched         BIGINT      NOT NULL DEFAULT 0,
    recovered       BIGINT      NOT NULL DEFAULT 0,
    done            BOOLEAN     NOT NULL DEFAULT false,
    error           TEXT,
    lease_until     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX operations_running ON operations (id) WHERE NOT done;
