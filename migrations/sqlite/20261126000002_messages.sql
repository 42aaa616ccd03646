-- See the Postgres migration: message and endpoint of each delivery, and
-- the organizations' signing secrets.
ALTER TABLE webhook_requests ADD COLUMN message_id TEXT;
ALTER TABLE webhook_requests ADD COLUMN endpoint_id TEXT;
UPDATE webhook_requests SET message_id = request_id WHERE message_id IS NULL;
CREATE INDEX webhook_requests_message ON webhook_requests (message_id);

CREATE TABLE organization_secrets (
    organization_id             TEXT    PRIMARY KEY,
    secret                      BLOB    NOT NULL,
    previous_secret             BLOB,
    previous_secret_expires_at  INTEGER,
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL
);
