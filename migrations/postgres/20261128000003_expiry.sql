-- When delivery gives up: a delivery not succeeded by then fails with the
-- category "expired" instead of retrying (NULL: no deadline).
ALTER TABLE webhook_requests ADD COLUMN expires_at TIMESTAMPTZ;
