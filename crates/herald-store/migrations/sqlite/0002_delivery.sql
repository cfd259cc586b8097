-- Accepted events and their deliveries: the durable queue (see src/sqlite.rs for its life cycle).

CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id     TEXT    NOT NULL,
    event_id       TEXT    NOT NULL,
    flavour        TEXT    NOT NULL CHECK (flavour IN ('live')),
    -- The validated event's fields as JSON, in notification order.
    payload        TEXT    NOT NULL,
    -- How many deliveries acceptance created: the idempotent answer repeats it.
    deliveries     INTEGER NOT NULL,
    accepted_at_ms INTEGER NOT NULL,
    UNIQUE (project_id, event_id)
) STRICT;

CREATE TABLE deliveries (
    -- Also the acceptance order, which per-stream FIFO follows.
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id          TEXT    NOT NULL,
    event_seq           INTEGER NOT NULL REFERENCES events (seq),
    config_id           TEXT    NOT NULL,
    stream              TEXT    NOT NULL,
    -- scheme://host:port of the URL: the unit of per-endpoint concurrency.
    endpoint            TEXT    NOT NULL,
    -- The config's URL and signing as they were when the event was accepted; the sealed
    -- key is the config row's ciphertext, bound to config_id.
    url                 TEXT    NOT NULL,
    sign_type           TEXT    NOT NULL CHECK (sign_type IN ('HMACSHA256', 'MD5')),
    key_sealed          BLOB,
    -- blocked: an earlier delivery of the same (config, stream) is not finished.
    -- pending: due at next_attempt_at_ms, never tried. retrying: failed, due again later.
    -- running: leased by lease_owner until lease_expires_at_ms.
    state               TEXT    NOT NULL CHECK (state IN
                            ('blocked', 'pending', 'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms  INTEGER NOT NULL,
    lease_owner         TEXT,
    lease_expires_at_ms INTEGER,
    created_at_ms       INTEGER NOT NULL,
    CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at_ms IS NOT NULL))
) STRICT;

CREATE INDEX deliveries_due ON deliveries (next_attempt_at_ms, id) WHERE state IN ('pending', 'retrying');
CREATE INDEX deliveries_open_by_stream ON deliveries (config_id, stream, id)
    WHERE state IN ('blocked', 'pending', 'running', 'retrying');
CREATE INDEX deliveries_leases ON deliveries (lease_expires_at_ms) WHERE state = 'running';
CREATE INDEX deliveries_by_project ON deliveries (project_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_seq);

CREATE TABLE delivery_attempts (
    delivery_id   INTEGER NOT NULL REFERENCES deliveries (id),
    attempt       INTEGER NOT NULL,
    at_ms         INTEGER NOT NULL,
    status_code   INTEGER,
    error         TEXT,
    latency_ms    INTEGER NOT NULL,
    -- The first bytes of the receiver's answer, for the log.
    response_head TEXT,
    PRIMARY KEY (delivery_id, attempt)
) STRICT;
