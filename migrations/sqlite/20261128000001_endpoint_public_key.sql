-- See the Postgres migration: the ed25519 public key beside the sealed secret.
ALTER TABLE endpoints ADD COLUMN public_key TEXT;
