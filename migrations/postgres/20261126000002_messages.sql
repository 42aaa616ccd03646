-- A webhook dispatched once can now become several deliveries (one per
-- endpoint): they share a message ID (the `webhook-id` header receivers
-- deduplicate on), and a delivery may name the endpoint it goes to.
ALTER TABLE webhook_requests ADD COLUMN message_id UUID;
ALTER TABLE webhook_requests ADD COLUMN endpoint_id UUID;
-- Until now every request was its own message.
UPDATE webhook_requests SET message_id = request_id WHERE message_id IS NULL;
ALTER TABLE webhook_requests ALTER COLUMN message_id SET NOT NULL;
-- A repeated idempotent Dispatch answers every delivery of its message.
CREATE INDEX webhook_requests_message ON webhook_requests (message_id);
ALTER TABLE idempotency_keys ADD COLUMN message_id UUID;
UPDATE idempotency_keys SET message_id = request_id WHERE message_id IS NULL;

-- The secret that signs deliveries to a bare webhook_url, one per
-- organization, encrypted like endpoints' secrets.
CREATE TABLE organization_secrets (
    organization_id             UUID        PRIMARY KEY,
    secret                      BYTEA       NOT NULL,
    previous_secret             BYTEA,
    previous_secret_expires_at  TIMESTAMPTZ,
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                  TIMESTAMPTZ NOT NULL DEFAULT now()
);
