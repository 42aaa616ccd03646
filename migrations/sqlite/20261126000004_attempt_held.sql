-- See the Postgres migration: late attempts are kept but marked.
ALTER TABLE webhook_attempts ADD COLUMN held INTEGER NOT NULL DEFAULT 1;
