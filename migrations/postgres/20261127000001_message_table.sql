-- The message, stored once: the event as dispatched (who, what type, the
-- exact body, call/assistant IDs, metadata, idempotency key). It never
-- changes. Its deliveries (webhook_requests, one per endpoint or URL) are the
-- queue entries and log rows; they keep copies of the few message fields
-- that log filters use (organization, workspace, call, event type), so that
-- every listing stays an index range scan on one table, and nothing else.
--
-- Partitioned by day like deliveries and attempts, with the same bounds: a
-- message's deliveries are created in its transaction, so they share its
-- created_at, and (message_id, created_at) finds it in one partition.
-- Retention removes a day's messages with that day's deliveries.
CREATE TABLE webhook_messages (
    message_id      UUID        NOT NULL,
    organization_id UUID        NOT NULL,
    workspace_id    UUID,
    webhook_type    TEXT        NOT NULL,
    -- The exact bytes POSTed to every endpoint, fixed at dispatch time.
    body            TEXT        NOT NULL,
    call_id         BIGINT,
    assistant_id    BIGINT,
    metadata        JSONB,
    idempotency_key TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (message_id, created_at)
) PARTITION BY RANGE (created_at);

-- One partition for each attached day of the deliveries, same bounds.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN
        SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class t ON t.oid = i.inhparent
        WHERE t.relname = 'webhook_requests' AND NOT i.inhdetachpending
    LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF webhook_messages %s',
                       replace(p.name, 'webhook_requests_', 'webhook_messages_'), p.bound);
    END LOOP;
END $$;

-- Existing deliveries become messages: the deliveries of one fan-out share a
-- message ID and a creation time; the first one holds the key.
INSERT INTO webhook_messages (message_id, organization_id, workspace_id, webhook_type, body, call_id,
    assistant_id, metadata, idempotency_key, created_at)
SELECT DISTINCT ON (message_id, created_at) message_id, organization_id, workspace_id, webhook_type, body,
    call_id, assistant_id, metadata, idempotency_key, created_at
FROM webhook_requests
ORDER BY message_id, created_at, id;

-- What now lives on the message only. (Dropping a column is a catalog
-- change: existing rows are not rewritten.)
ALTER TABLE webhook_requests DROP COLUMN body;
ALTER TABLE webhook_requests DROP COLUMN metadata;
ALTER TABLE webhook_requests DROP COLUMN assistant_id;
ALTER TABLE webhook_requests DROP COLUMN idempotency_key;
