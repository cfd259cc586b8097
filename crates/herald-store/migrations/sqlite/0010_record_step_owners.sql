-- Steps are owned by the tracker that leased them (issue 25 item 5): finishing,
-- postponing and extending check the owner, so a node whose lease ran out cannot undo the
-- work of the node that took the step over. `attempts` counts claims, so a step that
-- keeps ending its tracker is failed rather than taken forever.
ALTER TABLE record_steps ADD COLUMN lease_owner TEXT;
ALTER TABLE record_steps ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
