-- Fair claiming (see the Postgres migration). Pending bare-URL deliveries
-- stored before this are queued by their whole URL (SQLite has no regex to
-- take the host out); new ones by host.
ALTER TABLE webhook_requests ADD COLUMN queue_key TEXT;
UPDATE webhook_requests
SET queue_key = CASE WHEN endpoint_id IS NOT NULL THEN 'e:' || endpoint_id ELSE 'h:' || webhook_url END
WHERE status = 'pending';
CREATE INDEX webhook_requests_queue_due ON webhook_requests (queue_key, next_attempt_at) WHERE status = 'pending';
