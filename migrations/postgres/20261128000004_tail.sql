-- The live tail (WatchWebhookLogs) reads attempts and delivery status
-- changes in the order their transactions became visible, without a gap
-- when transactions commit out of order: each row records the ID of the
-- transaction that wrote it (xid), and a reader takes only rows whose xid is
-- below the oldest transaction still running (pg_snapshot_xmin): those
-- transactions are all finished, so nothing can appear among them later.
-- Set on new rows only (no rewrite of existing attempts).
ALTER TABLE webhook_attempts ADD COLUMN xid BIGINT;
ALTER TABLE webhook_attempts ALTER COLUMN xid SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX webhook_attempts_xid ON webhook_attempts (xid, id);

-- Status changes that no attempt explains: held, released, redelivered,
-- recovered. Removed with the logs they belong to (retention).
CREATE TABLE delivery_events (
    id                 BIGSERIAL   PRIMARY KEY,
    xid                BIGINT      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    log_id             BIGINT      NOT NULL,
    request_created_at TIMESTAMPTZ NOT NULL,
    status             TEXT        NOT NULL,
    -- 'held', 'released', 'redelivered', 'recovered'
    reason             TEXT        NOT NULL,
    at                 TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX delivery_events_xid ON delivery_events (xid, id);
CREATE INDEX delivery_events_created ON delivery_events (request_created_at);
