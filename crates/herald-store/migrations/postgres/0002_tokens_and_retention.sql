-- Tokens get a public id (the first 16 hex characters of their SHA-256, which names a
-- token for `herald tokens revoke` without revealing it) and an optional expiry.
ALTER TABLE tokens ADD COLUMN id TEXT;
ALTER TABLE tokens ADD COLUMN expires_at_ms BIGINT;
UPDATE tokens SET id = substr(token_sha256, 1, 16);
ALTER TABLE tokens ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX tokens_by_id ON tokens (id);

-- Retention deletes the oldest finished events first; without this index each pass would
-- scan the whole history.
CREATE INDEX events_by_acceptance ON events (accepted_at_ms, seq);
