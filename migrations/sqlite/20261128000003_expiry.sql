-- When delivery gives up (see the Postgres migration); microseconds.
ALTER TABLE webhook_requests ADD COLUMN expires_at INTEGER;
