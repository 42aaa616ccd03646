-- Each attempt remembers the claim (lease) it was made under, and a claim can
-- record at most one attempt: recording again after a lost reply (the commit
-- went through, the answer did not) finds the row and records nothing twice.
ALTER TABLE webhook_attempts ADD COLUMN lease_id UUID;
CREATE UNIQUE INDEX webhook_attempts_claim ON webhook_attempts (request_pk, lease_id, request_created_at);
