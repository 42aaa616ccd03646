-- Fair claiming: each pending delivery belongs to a queue, its endpoint
-- ("e:<endpoint ID>") or, for a bare URL, its host ("h:<host:port>"). The
-- engine walks the queues round-robin (one index probe per queue, whatever
-- each one's backlog) and claims from each only what its in-flight cap and
-- rate limit allow, instead of claiming rows only to give them back.
ALTER TABLE webhook_requests ADD COLUMN queue_key TEXT;
UPDATE webhook_requests
SET queue_key = CASE
    WHEN endpoint_id IS NOT NULL THEN 'e:' || endpoint_id::text
    ELSE 'h:' || lower(substring(webhook_url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)'))
END
WHERE status = 'pending';
CREATE INDEX webhook_requests_queue_due ON webhook_requests (queue_key, next_attempt_at) WHERE status = 'pending';
