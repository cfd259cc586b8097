-- A successful attempt is kept in its delivery's row (issue 29): a first-try success is then
-- one change of that row, and delivery_attempts holds the failed and lost attempts only.
-- Its attempt number is the row's `attempts`; its error is none. Rows that succeeded before
-- this migration keep their success in delivery_attempts, with these columns NULL.
ALTER TABLE deliveries ADD COLUMN success_at_ms BIGINT;
ALTER TABLE deliveries ADD COLUMN success_status_code BIGINT;
ALTER TABLE deliveries ADD COLUMN success_latency_ms BIGINT;
ALTER TABLE deliveries ADD COLUMN success_response_head TEXT;
