-- Endpoints (webhook subscriptions); see the Postgres migration. JSON columns
-- are TEXT, times INTEGER microseconds, UUIDs lowercase TEXT.
CREATE TABLE endpoints (
    id                          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id                 TEXT    NOT NULL UNIQUE,
    organization_id             TEXT    NOT NULL,
    workspace_id                TEXT,
    url                         TEXT    NOT NULL,
    description                 TEXT    NOT NULL DEFAULT '',
    event_types                 TEXT    NOT NULL DEFAULT '[]',
    disabled                    INTEGER NOT NULL DEFAULT 0,
    headers                     TEXT    NOT NULL DEFAULT '{}',
    policy                      TEXT    NOT NULL DEFAULT '{}',
    secret                      BLOB    NOT NULL,
    previous_secret             BLOB,
    previous_secret_expires_at  INTEGER,
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL
);
CREATE INDEX endpoints_org_created ON endpoints (organization_id, created_at, id);
