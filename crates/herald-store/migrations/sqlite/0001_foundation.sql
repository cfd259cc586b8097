-- Credentials and Live-flavour callback configs. Secrets are sealed by the application
-- with the master key (see herald_core::secrets); tokens are kept only as SHA-256 digests.

CREATE TABLE access_keys (
    access_key        TEXT    NOT NULL PRIMARY KEY,
    project_id        TEXT    NOT NULL,
    secret_key_sealed BLOB    NOT NULL,
    created_at_ms     INTEGER NOT NULL
) STRICT;

CREATE INDEX access_keys_by_project ON access_keys (project_id);

CREATE TABLE tokens (
    token_sha256  TEXT    NOT NULL PRIMARY KEY,
    project_id    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE live_callback_configs (
    -- Creation order, so listing is stable across pages.
    seq                       INTEGER PRIMARY KEY AUTOINCREMENT,
    id                        TEXT    NOT NULL UNIQUE,
    project_id                TEXT    NOT NULL,
    publish_domain            TEXT    NOT NULL,
    app                       TEXT    NOT NULL,
    notify_callback_url       TEXT,
    -- Event type names joined by ','.
    notify_event_subscription TEXT    NOT NULL CHECK (notify_event_subscription <> ''),
    sign_type                 TEXT    NOT NULL CHECK (sign_type IN ('HMACSHA256', 'MD5')),
    key_sealed                BLOB,
    create_time_ms            INTEGER NOT NULL,
    update_time_ms            INTEGER NOT NULL,
    UNIQUE (project_id, publish_domain, app)
) STRICT;
