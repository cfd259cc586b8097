-- Uploads waiting (SPEC §7.1, issue 26): a file step whose upload failed and is tried again
-- counts its tries, so a source's status can say how many files wait for their bucket.
ALTER TABLE record_steps ADD COLUMN upload_tries INTEGER NOT NULL DEFAULT 0;
