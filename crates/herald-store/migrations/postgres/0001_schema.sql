-- Herald on PostgreSQL: the same tables as the embedded store (see ../sqlite), in one
-- migration because this backend has no history to replay. Times are Unix milliseconds
-- (BIGINT), as on SQLite, so both backends share their row types. Secrets are sealed by
-- the application with the master key; tokens are kept only as SHA-256 digests.

-- A value sealed under the master key at creation, so that a node started with another
-- key refuses to run instead of failing on every secret it reads.
CREATE TABLE herald_meta (
    name  TEXT  NOT NULL PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE access_keys (
    access_key        TEXT   NOT NULL PRIMARY KEY,
    project_id        TEXT   NOT NULL,
    secret_key_sealed BYTEA  NOT NULL,
    created_at_ms     BIGINT NOT NULL
);

CREATE INDEX access_keys_by_project ON access_keys (project_id);

CREATE TABLE tokens (
    token_sha256  TEXT   NOT NULL PRIMARY KEY,
    project_id    TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE live_callback_configs (
    -- Creation order, so listing is stable across pages.
    seq                       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                        TEXT   NOT NULL UNIQUE,
    project_id                TEXT   NOT NULL,
    publish_domain            TEXT   NOT NULL,
    app                       TEXT   NOT NULL,
    notify_callback_url       TEXT,
    -- Event type names joined by ','.
    notify_event_subscription TEXT   NOT NULL CHECK (notify_event_subscription <> ''),
    sign_type                 TEXT   NOT NULL CHECK (sign_type IN ('HMACSHA256', 'MD5')),
    key_sealed                BYTEA,
    create_time_ms            BIGINT NOT NULL,
    update_time_ms            BIGINT NOT NULL,
    UNIQUE (project_id, publish_domain, app)
);

CREATE TABLE rtc_apps (
    -- Creation order, so listing is stable across pages.
    seq                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id                 TEXT   NOT NULL UNIQUE,
    project_id             TEXT   NOT NULL,
    app_name               TEXT   NOT NULL,
    created_at_ms          BIGINT NOT NULL,
    -- The record callback: none while callback_url is NULL. The key is bound to the app id;
    -- deliveries copy it as they copy a Live key.
    callback_url           TEXT,
    auth_key_sealed        BYTEA,
    callback_updated_at_ms BIGINT NOT NULL,
    CHECK (callback_url IS NOT NULL OR auth_key_sealed IS NULL)
);

CREATE INDEX rtc_apps_by_project ON rtc_apps (project_id, seq);

CREATE TABLE events (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id     TEXT   NOT NULL,
    event_id       TEXT   NOT NULL,
    flavour        TEXT   NOT NULL CHECK (flavour IN ('live', 'rtc')),
    -- The validated event's fields as JSON text, in notification order (jsonb would
    -- reorder them).
    payload        TEXT   NOT NULL,
    -- How many deliveries acceptance created: the idempotent answer repeats it.
    deliveries     BIGINT NOT NULL,
    accepted_at_ms BIGINT NOT NULL,
    UNIQUE (project_id, event_id)
);

CREATE TABLE deliveries (
    -- Also the acceptance order within a stream, which per-stream FIFO follows: ingest
    -- holds the stream's advisory lock while it allocates ids (see src/postgres/queue.rs).
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id          TEXT   NOT NULL,
    event_seq           BIGINT NOT NULL REFERENCES events (seq),
    config_id           TEXT   NOT NULL,
    stream              TEXT   NOT NULL,
    -- scheme://host:port of the URL: the unit of per-endpoint concurrency.
    endpoint            TEXT   NOT NULL,
    -- The config's URL and signing as they were when the event was accepted.
    url                 TEXT   NOT NULL,
    sign_type           TEXT   NOT NULL CHECK (sign_type IN ('HMACSHA256', 'MD5')),
    key_sealed          BYTEA,
    -- blocked: an earlier delivery of the same (config, stream) is not finished.
    -- pending: due at next_attempt_at_ms, never tried. retrying: failed, due again later.
    -- running: leased by lease_owner until lease_expires_at_ms.
    state               TEXT   NOT NULL CHECK (state IN
                            ('blocked', 'pending', 'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT NOT NULL,
    lease_owner         TEXT,
    lease_expires_at_ms BIGINT,
    created_at_ms       BIGINT NOT NULL,
    CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at_ms IS NOT NULL))
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at_ms, id) WHERE state IN ('pending', 'retrying');
CREATE INDEX deliveries_open_by_stream ON deliveries (config_id, stream, id)
    WHERE state IN ('blocked', 'pending', 'running', 'retrying');
CREATE INDEX deliveries_blocked_by_stream ON deliveries (config_id, stream, id) WHERE state = 'blocked';
CREATE INDEX deliveries_leases ON deliveries (lease_expires_at_ms) WHERE state = 'running';
CREATE INDEX deliveries_by_project ON deliveries (project_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_seq);

CREATE TABLE delivery_attempts (
    delivery_id   BIGINT NOT NULL REFERENCES deliveries (id),
    attempt       BIGINT NOT NULL,
    at_ms         BIGINT NOT NULL,
    status_code   BIGINT,
    error         TEXT,
    latency_ms    BIGINT NOT NULL,
    -- The first bytes of the receiver's answer, for the log.
    response_head TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
