-- Endpoints (webhook subscriptions): registered once, then dispatched to.
-- Signing secrets are stored encrypted (see src/secrets.rs); the previous
-- secret signs beside the current one until previous_secret_expires_at.
CREATE TABLE endpoints (
    id                          BIGSERIAL   PRIMARY KEY,
    endpoint_id                 UUID        NOT NULL UNIQUE,
    organization_id             UUID        NOT NULL,
    workspace_id                UUID,
    url                         TEXT        NOT NULL,
    description                 TEXT        NOT NULL DEFAULT '',
    event_types                 JSONB       NOT NULL DEFAULT '[]',
    disabled                    BOOLEAN     NOT NULL DEFAULT false,
    headers                     JSONB       NOT NULL DEFAULT '{}',
    policy                      JSONB       NOT NULL DEFAULT '{}',
    secret                      BYTEA       NOT NULL,
    previous_secret             BYTEA,
    previous_secret_expires_at  TIMESTAMPTZ,
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Listing by organization (and workspace), oldest first.
CREATE INDEX endpoints_org_created ON endpoints (organization_id, created_at, id);
