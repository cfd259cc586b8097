-- Room on each page of deliveries for the new versions of its rows (issue 29 item 2). A
-- delivery's row is updated two or three times soon after it is written (claim, outcome,
-- its stream's next one unblocked), and none of those updates can be HOT: each changes
-- `state`, which partial indexes read. On a full page the new version goes to another page,
-- and PostgreSQL then also logs a lock of the old version before it lets go of the page:
-- 3.3 Heap LOCK records per callback in b1, against 2.9 updates. With a quarter of each
-- page left free at insert, most new versions stay on their page: 2.0 LOCK records (1 of
-- them the claim's row lock), 25.7 -> 24.0 WAL records per callback. Applies to pages
-- written from now on.
ALTER TABLE deliveries SET (fillfactor = 75);
