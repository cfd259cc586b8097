-- One index finds a stream's deliveries (issue 29): the unblocking of a stream's next
-- delivery and a claim's followers read deliveries_open_by_stream, whose oldest entry after
-- a finished delivery is the stream's next one. With deliveries_blocked_by_stream beside it,
-- every callback of a busy stream also changed an entry of a second index keyed by stream,
-- on a page of its own (streams interleave, so its leaf pages are touched at random): about
-- one 4 KiB WAL frame per callback, which this saves.
DROP INDEX deliveries_blocked_by_stream;
