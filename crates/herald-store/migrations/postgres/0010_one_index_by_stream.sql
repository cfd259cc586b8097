-- One index finds a stream's deliveries (issue 29): the unblocking of a stream's next
-- delivery reads deliveries_open_by_stream, whose oldest entry after a finished delivery is
-- the stream's next one. deliveries_blocked_by_stream beside it cost one more index entry,
-- one more WAL record, for every delivery accepted behind another of its stream.
DROP INDEX deliveries_blocked_by_stream;
