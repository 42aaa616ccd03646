-- Each attempt remembers the claim it was made under; a claim records at most
-- one attempt (see the Postgres migration of the same name).
ALTER TABLE webhook_attempts ADD COLUMN lease_id TEXT;
CREATE UNIQUE INDEX webhook_attempts_claim ON webhook_attempts (request_pk, lease_id);
