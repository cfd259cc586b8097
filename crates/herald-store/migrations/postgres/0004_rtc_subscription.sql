-- The event types an app's record callback is sent (names joined by ','); NULL, as for
-- every app from before, is all three.
ALTER TABLE rtc_apps ADD COLUMN notify_event_subscription TEXT;
