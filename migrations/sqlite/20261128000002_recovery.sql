-- Redeliver, recover, pause and auto-disable (see the Postgres migration).
-- SQLite cannot change a CHECK constraint in place, so webhook_requests is
-- rebuilt to allow the 'held' status, the documented way: migrations run
-- with foreign keys off (SqliteStore::migrate), so dropping the old table
-- does not cascade to the attempts; legacy_alter_table keeps the attempts'
-- REFERENCES webhook_requests pointing at the name, which the new table
-- takes; foreign keys are checked before the migration commits.
PRAGMA legacy_alter_table = ON;
CREATE TABLE webhook_requests_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id       TEXT    NOT NULL UNIQUE,
    organization_id  TEXT    NOT NULL,
    workspace_id     TEXT,
    subscription_id  TEXT,
    call_id          INTEGER,
    webhook_url      TEXT    NOT NULL,
    webhook_type     TEXT    NOT NULL,
    idempotency_key  TEXT,
    max_retries      INTEGER NOT NULL CHECK (max_retries >= 0),
    status           TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed', 'held')),
    attempt_count    INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    lease_id         TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    message_id       TEXT,
    endpoint_id      TEXT,
    queue_key        TEXT,
    manual_from      INTEGER,
    UNIQUE (organization_id, idempotency_key)
);
INSERT INTO webhook_requests_new (id, request_id, organization_id, workspace_id, subscription_id, call_id,
    webhook_url, webhook_type, idempotency_key, max_retries, status, attempt_count, next_attempt_at, lease_id,
    created_at, updated_at, message_id, endpoint_id, queue_key)
SELECT id, request_id, organization_id, workspace_id, subscription_id, call_id, webhook_url, webhook_type,
    idempotency_key, max_retries, status, attempt_count, next_attempt_at, lease_id, created_at, updated_at,
    message_id, endpoint_id, queue_key
FROM webhook_requests;
DROP TABLE webhook_requests;
ALTER TABLE webhook_requests_new RENAME TO webhook_requests;
CREATE INDEX webhook_requests_org_created ON webhook_requests (organization_id, created_at DESC, id DESC);
CREATE INDEX webhook_requests_org_status_created ON webhook_requests (organization_id, status, created_at DESC, id DESC);
CREATE INDEX webhook_requests_org_sub_created ON webhook_requests (organization_id, subscription_id, created_at DESC, id DESC);
CREATE INDEX webhook_requests_call_created ON webhook_requests (call_id, created_at DESC, id DESC);
CREATE INDEX webhook_requests_created ON webhook_requests (created_at DESC, id DESC);
CREATE INDEX webhook_requests_due ON webhook_requests (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_requests_message ON webhook_requests (message_id);
CREATE INDEX webhook_requests_queue_due ON webhook_requests (queue_key, next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_requests_held ON webhook_requests (endpoint_id, created_at, id) WHERE status = 'held';

ALTER TABLE webhook_attempts ADD COLUMN manual INTEGER NOT NULL DEFAULT 0;

ALTER TABLE endpoints ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE endpoints ADD COLUMN disabled_reason TEXT;
ALTER TABLE endpoints ADD COLUMN disabled_at INTEGER;
ALTER TABLE endpoints ADD COLUMN failing_since INTEGER;
ALTER TABLE endpoints ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;

CREATE TABLE operations (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    operation_id    TEXT    NOT NULL UNIQUE,
    organization_id TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    params          TEXT    NOT NULL,
    cursor_at       INTEGER,
    cursor_id       INTEGER,
    matched         INTEGER NOT NULL DEFAULT 0,
    recovered       INTEGER NOT NULL DEFAULT 0,
    done            INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    lease_until     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

PRAGMA legacy_alter_table = OFF;
