-- Recording sources (SPEC §7): media servers whose hooks Herald turns into recording
-- events, each stream's recording session, and the steps queued for the tracker.

CREATE TABLE record_sources (
    id                 TEXT    NOT NULL PRIMARY KEY,
    project_id         TEXT    NOT NULL,
    engine             TEXT    NOT NULL CHECK (engine IN ('nginx-rtmp', 'srs', 'mediamtx')),
    -- Exactly one: the Live ingest domain or the RTC app the source reports for.
    publish_domain     TEXT,
    app_id             TEXT REFERENCES rtc_apps (app_id) ON DELETE CASCADE,
    record_dir         TEXT    NOT NULL,
    download_base      TEXT,
    max_pause_ms       INTEGER NOT NULL,
    -- The hook URL's secret: found by its digest, shown again by opening the sealed copy.
    secret_sha256      TEXT    NOT NULL UNIQUE,
    secret_sealed      BLOB    NOT NULL,
    created_at_ms      INTEGER NOT NULL,
    -- The last file that could not be reported, for the source's status.
    last_error_at_ms   INTEGER,
    last_error_file    TEXT,
    last_error_message TEXT,
    CHECK ((publish_domain IS NULL) <> (app_id IS NULL))
) STRICT;

CREATE INDEX record_sources_by_project ON record_sources (project_id, created_at_ms, id);

-- One row per stream with an open session; deleted when the session ends.
CREATE TABLE record_sessions (
    source_id     TEXT    NOT NULL REFERENCES record_sources (id) ON DELETE CASCADE,
    app           TEXT    NOT NULL,
    stream        TEXT    NOT NULL,
    job_id        TEXT    NOT NULL,
    published     INTEGER NOT NULL,
    -- While unpublished: when the session ends (the max_pause timer, durable).
    over_at_ms    INTEGER,
    files_started INTEGER NOT NULL,
    PRIMARY KEY (source_id, app, stream)
) STRICT;

CREATE INDEX record_sessions_pausing ON record_sessions (over_at_ms) WHERE over_at_ms IS NOT NULL;

-- What is to be reported, per stream in id order. A step is open until done_at_ms is set;
-- a done step is kept only while its hook_key may still come again (a repeated hook).
CREATE TABLE record_steps (
    id             INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    source_id      TEXT    NOT NULL REFERENCES record_sources (id) ON DELETE CASCADE,
    app            TEXT    NOT NULL,
    stream         TEXT    NOT NULL,
    job_id         TEXT    NOT NULL,
    kind           TEXT    NOT NULL CHECK (kind IN ('start', 'file_start', 'file', 'over')),
    file_no        INTEGER NOT NULL,
    path           TEXT,
    at_ms          INTEGER NOT NULL,
    hook_key       TEXT,
    due_at_ms      INTEGER NOT NULL,
    lease_until_ms INTEGER,
    done_at_ms     INTEGER,
    UNIQUE (source_id, hook_key)
) STRICT;

CREATE INDEX record_steps_open ON record_steps (source_id, app, stream, id) WHERE done_at_ms IS NULL;
CREATE INDEX record_steps_done ON record_steps (done_at_ms) WHERE done_at_ms IS NOT NULL;
