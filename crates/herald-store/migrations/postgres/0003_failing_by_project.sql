-- The delivery log filtered by `failed` or `dead` (what an operator looks for when a
-- callback did not arrive): without this index it read the project's whole history, newest
-- first, to find the few failing deliveries (0.8 s with 1,000,000 stored). Partial, on the
-- states a delivery reaches only by failing (or by its config being deleted), so the
-- healthy path (pending, running, succeeded) never writes to it.
CREATE INDEX deliveries_failing_by_project ON deliveries (project_id, state, id)
    WHERE state IN ('retrying', 'dead', 'cancelled');
