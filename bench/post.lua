-- wrk script for the receiver limit: POST exactly what Herald sends for one benchmark event
-- (a signed 628-byte Live RECORD_FILE_COMPLETE notification, same headers).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json; charset=utf-8"
wrk.headers["Herald-Event-Id"] = "wrk-0000000"
wrk.headers["Herald-Delivery-Attempt"] = "1"
wrk.headers["Accept"] = "*/*"
wrk.headers["User-Agent"] = "Herald/0.1.0"
wrk.body = '{"project_id":"b3c4e5f60718293a4b5c6d7e8f901234","event_type":"RECORD_FILE_COMPLETE","publish_domain":"bench.example.com","app":"live","stream":"s0421","record_format":"MP4","download_url":"https://obs.example.com/live/s0421/record-bench.example.com-live-s0421-1714557600.mp4","play_url":"https://play.example.com/live/s0421/record-bench.example.com-live-s0421-1714557600.mp4","file_size":734003621,"record_duration":1800,"start_time":"2024-05-01T10:00:00Z","end_time":"2024-05-01T10:30:00Z","width":1920,"height":1080,"auth_sign":"0d5143b5f0991ba80df4333b85b0a910ea89f818aa88c395d41e208bbe6eff5c","auth_timestamp":"1795346217"}'
