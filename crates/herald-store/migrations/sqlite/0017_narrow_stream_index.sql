-- The by-stream index keyed by a number per config rather than by the config's id (issue
-- 29). Every open delivery has an entry in deliveries_open_by_stream, and every ingest and
-- every outcome changes one. With the 32-character config id leading each entry, a
-- backlog's entries spread over hundreds of pages, and each commit wrote most of them to
-- the WAL again. A number per config makes the entries about a third as long, and the
-- pages a commit touches fewer: b (1,000 streams) wrote about 11% fewer bytes per callback
-- (docs/benchmarks.md).
--
-- stream_configs gives each config id that deliveries were made for its number, never
-- reused (AUTOINCREMENT): a deleted config's number is not another's. Every open delivery
-- has its config's number in config_n; a delivery finished before this migration has none
-- until a manual retry opens it again, which sets it.
CREATE TABLE stream_configs (
    n         INTEGER PRIMARY KEY AUTOINCREMENT,
    config_id TEXT    NOT NULL UNIQUE
) STRICT;

ALTER TABLE deliveries ADD COLUMN config_n INTEGER;

INSERT INTO stream_configs (config_id)
SELECT DISTINCT config_id FROM deliveries
WHERE state IN ('blocked', 'pending', 'running', 'retrying')
ORDER BY config_id;

UPDATE deliveries
SET config_n = (SELECT s.n FROM stream_configs s WHERE s.config_id = deliveries.config_id)
WHERE state IN ('blocked', 'pending', 'running', 'retrying');

DROP INDEX deliveries_open_by_stream;
CREATE INDEX deliveries_open_by_stream ON deliveries (config_n, stream, id)
    WHERE state IN ('blocked', 'pending', 'running', 'retrying');
