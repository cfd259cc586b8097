-- wrk script: POST a ~600-byte Live RECORD_FILE_COMPLETE callback body, as Herald would send it.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json; charset=utf-8"
wrk.headers["Herald-Event-Id"] = "wrk-0000000000000000000000000000"
wrk.headers["Herald-Delivery-Attempt"] = "1"
wrk.body = '{"project_id":"70b76e1f2a3b34253880af501cd0c0de","event_type":"RECORD_FILE_COMPLETE",'
  .. '"publish_domain":"bench.example.com","app":"live","stream":"s0421",'
  .. '"download_url":"https://obs.example.com/record/live/s0421/2024-05-01-10-00-00_2024-05-01-10-30-00.mp4",'
  .. '"play_url":"https://play.example.com/record/live/s0421/2024-05-01-10-00-00_2024-05-01-10-30-00.mp4",'
  .. '"file_format":"mp4","file_size":734003200,"file_duration":1800,'
  .. '"file_start_time":"2024-05-01T10:00:00Z","file_end_time":"2024-05-01T10:30:00Z",'
  .. '"width":1920,"height":1080,'
  .. '"auth_timestamp":"1714558200","auth_sign":"3f0b5c2d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c"}'
