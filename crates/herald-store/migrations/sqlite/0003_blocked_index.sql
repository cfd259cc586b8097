-- Unblocking the next delivery of a stream looks for its oldest `blocked` delivery. SQLite
-- cannot use deliveries_open_by_stream for `state = 'blocked'` (it does not prove that
-- term implies the index's `state IN (...)`), so without this index it scanned the table.
CREATE INDEX deliveries_blocked_by_stream ON deliveries (config_id, stream, id) WHERE state = 'blocked';
