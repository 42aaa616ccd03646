-- One row per accepted webhook (one request ID). It is also the delivery queue:
-- a pending row whose next_attempt_at has passed is due. A worker claims it by
-- pushing next_attempt_at forward by the lease and stamping lease_id, so a row
-- claimed by a process that then dies becomes due again when the lease ends.
CREATE TABLE webhook_requests (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id       UUID        NOT NULL,
    organization_id  UUID        NOT NULL,
    workspace_id     UUID,
    subscription_id  UUID,
    call_id          BIGINT,
    assistant_id     BIGINT,
    webhook_url      TEXT        NOT NULL,
    webhook_type     TEXT        NOT NULL,
    -- The exact bytes POSTed, fixed at dispatch time.
    body             TEXT        NOT NULL,
    metadata         JSONB,
    idempotency_key  TEXT,
    max_retries      INTEGER     NOT NULL CHECK (max_retries >= 0),
    -- 'pending' | 'succeeded' | 'failed'
    status           TEXT        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempt_count    INTEGER     NOT NULL DEFAULT 0,
    -- Due time while pending (first try, retry, or lease expiry); NULL once final.
    next_attempt_at  TIMESTAMPTZ,
    -- Identifies the current claim; a worker may only settle the row it claimed.
    lease_id         UUID,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT webhook_requests_request_id_key UNIQUE (request_id),
    -- Idempotency is per organization, enforced here rather than by read-then-write.
    CONSTRAINT webhook_requests_idempotency_key UNIQUE (organization_id, idempotency_key)
);

-- Listing is keyset-paged newest first on (created_at, id) within an organization;
-- each common filter has an index whose tail is that order, so every page is an
-- index range scan whatever the table size.
CREATE INDEX webhook_requests_org_created
    ON webhook_requests (organization_id, created_at DESC, id DESC);
CREATE INDEX webhook_requests_org_status_created
    ON webhook_requests (organization_id, status, created_at DESC, id DESC);
CREATE INDEX webhook_requests_org_sub_created
    ON webhook_requests (organization_id, subscription_id, created_at DESC, id DESC)
    WHERE subscription_id IS NOT NULL;
CREATE INDEX webhook_requests_org_call_created
    ON webhook_requests (organization_id, call_id, created_at DESC, id DESC)
    WHERE call_id IS NOT NULL;
-- Listing across organizations (service callers without an organization filter).
CREATE INDEX webhook_requests_created ON webhook_requests (created_at DESC, id DESC);
-- The queue: only pending rows, ordered by due time.
CREATE INDEX webhook_requests_due
    ON webhook_requests (next_attempt_at)
    WHERE status = 'pending';

-- One row per delivery attempt; never updated once written.
CREATE TABLE webhook_attempts (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_pk         BIGINT      NOT NULL REFERENCES webhook_requests (id) ON DELETE CASCADE,
    attempt_number     INTEGER     NOT NULL CHECK (attempt_number >= 1),
    attempted_at       TIMESTAMPTZ NOT NULL,
    success            BOOLEAN     NOT NULL,
    status_code        INTEGER,
    response_body      TEXT        NOT NULL DEFAULT '',
    response_truncated BOOLEAN     NOT NULL DEFAULT false,
    response_time_ms   BIGINT      NOT NULL,
    error_category     TEXT,
    error_message      TEXT,
    CONSTRAINT webhook_attempts_number_key UNIQUE (request_pk, attempt_number)
);
