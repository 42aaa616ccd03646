-- The embedded store: the same model as Postgres in one file. Times are
-- INTEGER microseconds since the Unix epoch (exact ordering, like timestamptz);
-- UUIDs are lowercase hyphenated TEXT.
CREATE TABLE webhook_requests (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id       TEXT    NOT NULL UNIQUE,
    organization_id  TEXT    NOT NULL,
    workspace_id     TEXT,
    subscription_id  TEXT,
    call_id          INTEGER,
    assistant_id     INTEGER,
    webhook_url      TEXT    NOT NULL,
    webhook_type     TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    metadata         TEXT,
    idempotency_key  TEXT,
    max_retries      INTEGER NOT NULL CHECK (max_retries >= 0),
    status           TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempt_count    INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    lease_id         TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (organization_id, idempotency_key)
);
CREATE INDEX webhook_requests_org_created ON webhook_requests (organization_id, created_at DESC, id DESC);
CREATE INDEX webhook_requests_org_status_created ON webhook_requests (organization_id, status, created_at DESC, id DESC);
CREATE INDEX webhook_requests_org_sub_created ON webhook_requests (organization_id, subscription_id, created_at DESC, id DESC);
CREATE INDEX webhook_requests_call_created ON webhook_requests (call_id, created_at DESC, id DESC);
CREATE INDEX webhook_requests_created ON webhook_requests (created_at DESC, id DESC);
CREATE INDEX webhook_requests_due ON webhook_requests (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    request_pk         INTEGER NOT NULL REFERENCES webhook_requests (id) ON DELETE CASCADE,
    attempt_number     INTEGER NOT NULL CHECK (attempt_number >= 1),
    attempted_at       INTEGER NOT NULL,
    success            INTEGER NOT NULL,
    status_code        INTEGER,
    response_body      TEXT    NOT NULL DEFAULT '',
    response_truncated INTEGER NOT NULL DEFAULT 0,
    response_time_ms   INTEGER NOT NULL,
    error_category     TEXT,
    error_message      TEXT,
    UNIQUE (request_pk, attempt_number)
);

CREATE TABLE api_keys (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    prefix          TEXT    NOT NULL UNIQUE,
    key_hash        BLOB    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('organization', 'service')),
    organization_id TEXT,
    created_at      INTEGER NOT NULL,
    revoked_at      INTEGER
);
