-- An attempt recorded after its claim was lost (the lease expired and
-- another worker took the delivery) is kept, since it happened, but marked:
-- it is never the log's latest attempt and never decides the status.
ALTER TABLE webhook_attempts ADD COLUMN held BOOLEAN NOT NULL DEFAULT true;
