-- The message, stored once: the event as dispatched. Its deliveries
-- (webhook_requests) are the queue entries and log rows and keep copies of
-- the message fields that log filters use. See the Postgres migration.
CREATE TABLE webhook_messages (
    message_id      TEXT    PRIMARY KEY,
    organization_id TEXT    NOT NULL,
    workspace_id    TEXT,
    webhook_type    TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    call_id         INTEGER,
    assistant_id    INTEGER,
    metadata        TEXT,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL
);
CREATE INDEX webhook_messages_created ON webhook_messages (created_at);

INSERT INTO webhook_messages (message_id, organization_id, workspace_id, webhook_type, body, call_id,
    assistant_id, metadata, idempotency_key, created_at)
SELECT r.message_id, r.organization_id, r.workspace_id, r.webhook_type, r.body, r.call_id, r.assistant_id,
    r.metadata, r.idempotency_key, r.created_at
FROM webhook_requests r
WHERE r.id = (SELECT min(f.id) FROM webhook_requests f WHERE f.message_id = r.message_id);

-- The idempotency key stays on the first delivery too: its unique
-- (organization, key) constraint is what decides a duplicate here.
ALTER TABLE webhook_requests DROP COLUMN body;
ALTER TABLE webhook_requests DROP COLUMN metadata;
ALTER TABLE webhook_requests DROP COLUMN assistant_id;
