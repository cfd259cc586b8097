-- A value sealed under the master key, as on PostgreSQL: a server started with another key
-- (HERALD_MASTER_KEY set to a different one, or another data dir's master.key) refuses to
-- start instead of answering 500 to every call that reads a secret and sending every new
-- delivery to `dead`. The row is written by the first start after this migration.
CREATE TABLE herald_meta (
    name  TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;
