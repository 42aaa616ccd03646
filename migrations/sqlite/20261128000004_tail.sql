-- The live tail: SQLite has one writer, so row IDs follow commit order and
-- attempts are tailed by ID. Status changes that no attempt explains are
-- recorded here (see the Postgres migration).
CREATE TABLE delivery_events (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    log_id             INTEGER NOT NULL,
    status             TEXT    NOT NULL,
    reason             TEXT    NOT NULL,
    at                 INTEGER NOT NULL
);
CREATE INDEX delivery_events_log ON delivery_events (log_id);
