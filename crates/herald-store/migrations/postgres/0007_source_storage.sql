-- Recordings in object storage (SPEC §7.1, issue 26): a source's format and bucket. The
-- bucket's settings are one JSON object (endpoint, region, bucket, access_key_id,
-- path_style, object_prefix, delete_local), read and checked by the core's StorageSpec;
-- its secret access key is sealed with the master key, bound to the source's id.
ALTER TABLE record_sources ADD COLUMN record_format TEXT
    CHECK (record_format IN ('FLV', 'MP4', 'HLS'));
ALTER TABLE record_sources ADD COLUMN storage_json TEXT;
ALTER TABLE record_sources ADD COLUMN storage_secret_sealed BYTEA;
ALTER TABLE record_sources ADD CONSTRAINT record_sources_storage_sealed
    CHECK ((storage_json IS NULL) = (storage_secret_sealed IS NULL));
