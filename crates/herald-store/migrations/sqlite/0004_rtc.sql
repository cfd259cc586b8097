-- The RTC flavour: apps with their record callback, and events of either flavour.

CREATE TABLE rtc_apps (
    app_id                 TEXT    NOT NULL PRIMARY KEY,
    project_id             TEXT    NOT NULL,
    app_name               TEXT    NOT NULL,
    created_at_ms          INTEGER NOT NULL,
    -- The record callback: none while callback_url is NULL. The key is sealed by the
    -- application and bound to the app id; deliveries copy it as they copy a Live key.
    callback_url           TEXT,
    auth_key_sealed        BLOB,
    callback_updated_at_ms INTEGER NOT NULL,
    CHECK (callback_url IS NOT NULL OR auth_key_sealed IS NULL)
) STRICT;

CREATE INDEX rtc_apps_by_project ON rtc_apps (project_id);

-- Widening events.flavour's CHECK means rebuilding the table: SQLite cannot alter a
-- CHECK. sqlx runs this in a transaction, where foreign keys cannot be switched off, so
-- the check of deliveries.event_seq is deferred to the commit, by which time every event
-- is back under its old seq.
PRAGMA defer_foreign_keys = ON;
CREATE TABLE events_copy AS SELECT * FROM events;
DROP TABLE events;
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id     TEXT    NOT NULL,
    event_id       TEXT    NOT NULL,
    flavour        TEXT    NOT NULL CHECK (flavour IN ('live', 'rtc')),
    -- The validated event's fields as JSON, in notification order.
    payload        TEXT    NOT NULL,
    -- How many deliveries acceptance created: the idempotent answer repeats it.
    deliveries     INTEGER NOT NULL,
    accepted_at_ms INTEGER NOT NULL,
    UNIQUE (project_id, event_id)
) STRICT;
INSERT INTO events (seq, project_id, event_id, flavour, payload, deliveries, accepted_at_ms)
    SELECT seq, project_id, event_id, flavour, payload, deliveries, accepted_at_ms FROM events_copy;
DROP TABLE events_copy;
