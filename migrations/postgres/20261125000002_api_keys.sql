-- API keys, stored only as SHA-256 hashes. `prefix` is the visible part that
-- identifies a key (in listings, logs and revocation) and finds it on use.
CREATE TABLE api_keys (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prefix          TEXT        NOT NULL UNIQUE,
    key_hash        BYTEA       NOT NULL,
    -- 'organization': acts for organization_id only; 'service': for any
    -- organization named in the request.
    kind            TEXT        NOT NULL CHECK (kind IN ('organization', 'service')),
    organization_id UUID,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at      TIMESTAMPTZ,
    CHECK ((kind = 'organization') = (organization_id IS NOT NULL))
);
