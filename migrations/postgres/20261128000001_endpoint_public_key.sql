-- The current secret's ed25519 public key (`whpk_...`) when the endpoint
-- signs with ed25519 (Standard Webhooks `v1a`); NULL for HMAC-SHA256, so
-- every existing endpoint keeps its scheme. The key itself stays in the
-- sealed `secret` column, whose prefix (`whsk_`) is what delivery signs by;
-- this copy is public and lets reads and lists show the scheme and the key
-- without opening a secret. Written together with `secret`.
ALTER TABLE endpoints ADD COLUMN public_key TEXT;
