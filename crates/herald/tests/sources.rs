//! Recording sources (SPEC §7) driven by real media software: nginx with Debian's RTMP
//! module recording what ffmpeg publishes, SRS's and MediaMTX's hooks exactly as their
//! code sends them over files ffmpeg wrote, hostile hooks, and a kill -9 while a session
//! waits for its `max_pause`. Callbacks go to a real receiver and are verified with the
//! receiver kit.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::media::{self, Format, Nginx};
use common::receiver::{Received, Receiver};
use common::{TestServer, cli_json, cli_token, spawn_serve};
use herald_verify::{RtcHeaders, RtcVerifier, SignType, verify_live};
use serde_json::{Value, json};

const KEY: &str = "K8s3kd9Sk2mdLx0qPz7Rt5Vb1Nc4Hj6W";
const AUTH_KEY: &str = "rtcAuthKey0123456789abcdefABCDEF";
const DOMAIN: &str = "push.example.com";
const ALL_LIVE: [&str; 5] = [
    "RECORD_START",
    "RECORD_NEW_FILE_START",
    "RECORD_FILE_COMPLETE",
    "RECORD_OVER",
    "RECORD_FAILED",
];

/// A server whose project has a Live config for [`DOMAIN`] subscribed to every event type,
/// signed with [`KEY`], pointing at a receiver.
struct Live {
    server: TestServer,
    token: String,
    receiver: Receiver,
    record_dir: tempfile::TempDir,
}

impl Live {
    async fn start() -> Self {
        let live = Self::without_callbacks().await;
        let (status, body) = live
            .server
            .post_with_token(
                &live.token,
                "/v1/p1/record/callbacks",
                &json!({"publish_domain": DOMAIN, "app": "*", "notify_callback_url": live.receiver.url(),
                        "notify_event_subscription": ALL_LIVE, "sign_type": "HMACSHA256", "key": KEY}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        live
    }

    /// The server, its receiver and a record dir, with no config yet: [`Rtc`] starts here.
    async fn without_callbacks() -> Self {
        let server = TestServer::start_with(|s| s.allow_private_targets = true).await;
        let token = server.token("p1").await;
        Self {
            server,
            token,
            receiver: Receiver::ok().await,
            record_dir: tempfile::tempdir().unwrap(),
        }
    }

    fn record_dir(&self) -> PathBuf {
        self.record_dir.path().canonicalize().unwrap()
    }

    /// Creates a Live source of `engine` over the record dir; returns its JSON.
    /// One nginx-rtmp publish through `hook`: `publish`, a `record_done` for each of
    /// `files`, then `publish_done`, each answered 200.
    async fn nginx_session(&self, hook: &str, files: &[PathBuf]) {
        let path = |file: &PathBuf| {
            percent_encoding::utf8_percent_encode(
                file.to_str().unwrap(),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string()
        };
        let bodies = std::iter::once("app=live&call=publish&name=cam".to_owned())
            .chain(
                files
                    .iter()
                    .map(|f| format!("app=live&call=record_done&name=cam&path={}", path(f))),
            )
            .chain(std::iter::once(
                "app=live&call=publish_done&name=cam".to_owned(),
            ));
        for body in bodies {
            let answer = self
                .server
                .http
                .post(hook)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
        }
    }

    async fn source(&self, engine: &str, max_pause: &str) -> Value {
        let (status, source) = self
            .server
            .post_with_token(
                &self.token,
                "/v1/p1/record/sources",
                &json!({"engine": engine, "publish_domain": DOMAIN,
                        "record_dir": self.record_dir().to_str().unwrap(),
                        "download_base": "https://cdn.example.com/vod/", "max_pause": max_pause}),
            )
            .await;
        assert_eq!(status, 201, "{source}");
        source
    }

    /// The callbacks received so far, verified, each event once (the first arrival).
    fn events(&self) -> Vec<Value> {
        unique(&self.receiver.received())
            .iter()
            .map(|r| {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let fields = verify_live(&r.body, KEY, SignType::HmacSha256, now)
                    .unwrap_or_else(|e| panic!("a callback's signature: {e}"));
                Value::Object(fields)
            })
            .collect()
    }

    /// Waits until an event of `event_type` has arrived; returns every event so far.
    async fn wait_for_type(&self, event_type: &str) -> Vec<Value> {
        wait_until(&self.receiver, || {
            let events = self.events();
            events
                .iter()
                .any(|e| e["event_type"] == event_type)
                .then_some(events)
        })
        .await
    }
}

/// Each event once, in order of first arrival (delivery is at least once).
fn unique(received: &[Received]) -> Vec<Received> {
    let mut seen = std::collections::HashSet::new();
    received
        .iter()
        .filter(|r| seen.insert(r.header("herald-event-id")))
        .cloned()
        .collect()
}

/// Polls `done` until it gives a value; fails after a minute, listing what arrived.
async fn wait_until<T>(receiver: &Receiver, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = done() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting; received: {:?}",
            receiver
                .received()
                .iter()
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect()
}

/// The file a `download_url` names, below `record_dir`.
fn file_of(download_url: &str, record_dir: &Path) -> PathBuf {
    let relative = download_url
        .strip_prefix("https://cdn.example.com/vod/")
        .unwrap_or_else(|| panic!("download_url {download_url} is not below download_base"));
    record_dir.join(
        percent_encoding::percent_decode_str(relative)
            .decode_utf8()
            .unwrap()
            .as_ref(),
    )
}

/// Checks a RECORD_FILE_COMPLETE against the file on disk and ffprobe's own reading.
async fn check_file_complete(event: &Value, record_dir: &Path, format: &str) {
    let file = file_of(event["download_url"].as_str().unwrap(), record_dir);
    let on_disk = std::fs::metadata(&file).unwrap().len();
    assert_eq!(event["file_size"], on_disk, "file_size of {file:?}");
    let probed = media::ffprobe_duration(&file).await;
    let reported = event["record_duration"].as_f64().unwrap();
    assert!(
        (reported - probed).abs() <= 1.0,
        "record_duration {reported} of {file:?}, ffprobe says {probed}"
    );
    assert_eq!(event["width"], 1280);
    assert_eq!(event["height"], 720);
    assert_eq!(event["record_format"], format);
    for time in ["start_time", "end_time"] {
        let text = event[time].as_str().unwrap();
        assert!(text.len() == 20 && text.ends_with('Z'), "{time} {text}");
    }
}

/// The hook URL of a source on the server at `base` (the CLI prints it for its default
/// listen address).
fn hook_on(base: &str, source: &Value) -> String {
    let url = source["hook_url"].as_str().unwrap();
    let path = &url[url.find("/hooks/").unwrap()..];
    format!("{base}{path}")
}

#[tokio::test]
async fn nginx_rtmp_recording_reports_the_whole_lifecycle_and_a_republish_continues_it() {
    media::require_tools();
    let live = Live::start().await;
    let source = live.source("nginx-rtmp", "6s").await;
    let nginx = Nginx::start(
        source["hook_url"].as_str().unwrap(),
        &live.record_dir(),
        "3s",
    )
    .await;
    let url = nginx.rtmp_url("live", "cam");
    // Several record_intervals, then a republish within max_pause.
    media::publish(&url, 8).await;
    media::publish(&url, 4).await;
    let events = live.wait_for_type("RECORD_OVER").await;
    let seen = types(&events);
    eprintln!("received in order: {seen:?}");
    assert_eq!(seen[0], "RECORD_START");
    assert_eq!(seen[1], "RECORD_NEW_FILE_START");
    assert_eq!(*seen.last().unwrap(), "RECORD_OVER");
    assert_eq!(seen.iter().filter(|t| **t == "RECORD_START").count(), 1);
    assert_eq!(seen.iter().filter(|t| **t == "RECORD_OVER").count(), 1);
    assert!(!seen.contains(&"RECORD_FAILED"), "{events:?}");
    let completes: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "RECORD_FILE_COMPLETE")
        .collect();
    assert!(
        completes.len() >= 3,
        "12 s at a 3 s interval: {completes:?}"
    );
    // Each file starts (is announced) before it completes, and the republish announced a
    // new file without a new session.
    let starts = seen
        .iter()
        .filter(|t| **t == "RECORD_NEW_FILE_START")
        .count();
    assert!(starts >= completes.len(), "{seen:?}");
    let job = events[0]["job_id"].as_str().unwrap();
    for event in &events {
        assert_eq!(event["job_id"], job, "one session: {event}");
        assert_eq!(event["publish_domain"], DOMAIN);
        assert_eq!(event["app"], "live");
        assert_eq!(event["stream"], "cam");
        assert_eq!(event["project_id"], "p1");
    }
    for complete in &completes {
        check_file_complete(complete, &live.record_dir(), "FLV").await;
    }
    // The source's status is back to idle, and nginx saw no refused hook.
    let (_, shown) = live
        .server
        .get_with_token(
            &live.token,
            &format!("/v1/p1/record/sources/{}", source["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(shown["status"]["open_sessions"], 0, "{shown}");
    assert_eq!(shown["status"]["files_waiting"], 0, "{shown}");
    assert!(
        !nginx.logs().contains("notify: HTTP retcode: 4"),
        "{}",
        nginx.logs()
    );
    eprintln!(
        "one real session's callbacks:\n{}",
        events
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// What SRS sends (trunk/src/app/srs_app_http_hooks.cpp): every field a string.
fn srs_hook(action: &str, extra: &[(&str, &str)]) -> Value {
    let mut body = json!({
        "server_id": "vid-0x8u3k1", "service_id": "c4t5b0ad", "action": action,
        "client_id": "341w361a", "ip": "127.0.0.1", "vhost": "__defaultVhost__", "app": "live",
        "tcUrl": "rtmp://127.0.0.1/live", "stream": "cam", "param": "",
        "stream_url": "/live/cam", "stream_id": "vid-2a0n9zi",
    });
    for (k, v) in extra {
        body[*k] = json!(v);
    }
    body
}

#[tokio::test]
async fn srs_hooks_as_srs_sends_them_report_its_dvr_segments() {
    media::require_tools();
    let live = Live::start().await;
    let source = live.source("srs", "2s").await;
    let hook = source["hook_url"].as_str().unwrap().to_owned();
    // The configuration the docs give points all three hooks at the hook URL and records
    // FLV below the record dir, which is what this test then sends.
    let record_dir = live.record_dir();
    let conf = media::render(
        "srs.conf",
        &[
            ("HOOK_URL", hook.as_str()),
            ("RECORD_DIR", record_dir.to_str().unwrap()),
        ],
    );
    for name in ["on_publish", "on_unpublish", "on_dvr"] {
        assert!(
            conf.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [name, &format!("{hook};")]),
            "{name} in srs.conf"
        );
    }
    let segment_dir = record_dir.join("live/cam");
    std::fs::create_dir_all(&segment_dir).unwrap();
    let first = segment_dir.join("20261202-063700-123.flv");
    let last = segment_dir.join("20261202-063704-456.flv");
    media::write_recording(&first, Format::Flv, 4).await;
    media::write_recording(&last, Format::Flv, 2).await;
    let post = |body: Value| {
        let (http, hook) = (live.server.http.clone(), hook.clone());
        async move {
            let response = http.post(hook).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(
        post(srs_hook("on_publish", &[])).await,
        (200, json!({"code": 0}))
    );
    // `file` relative to `cwd`, as with SRS's default relative dvr_path.
    let cwd = record_dir.to_str().unwrap();
    let answer = post(srs_hook(
        "on_dvr",
        &[("cwd", cwd), ("file", "./live/cam/20261202-063700-123.flv")],
    ))
    .await;
    assert_eq!(answer, (200, json!({"code": 0})));
    // SRS sends the last on_dvr and on_unpublish at once: either may arrive first.
    let (dvr, unpublish) = tokio::join!(
        post(srs_hook(
            "on_dvr",
            &[("cwd", "/usr/local/srs"), ("file", last.to_str().unwrap())]
        )),
        post(srs_hook("on_unpublish", &[])),
    );
    assert_eq!((dvr.0, unpublish.0), (200, 200));
    let events = live.wait_for_type("RECORD_OVER").await;
    let seen = types(&events);
    assert_eq!(
        &seen[..4],
        [
            "RECORD_START",
            "RECORD_NEW_FILE_START",
            "RECORD_FILE_COMPLETE",
            "RECORD_NEW_FILE_START"
        ],
        "{seen:?}"
    );
    assert_eq!(*seen.last().unwrap(), "RECORD_OVER");
    let completes: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "RECORD_FILE_COMPLETE")
        .collect();
    assert_eq!(completes.len(), 2, "{seen:?}");
    for complete in completes {
        check_file_complete(complete, &record_dir, "FLV").await;
    }
    assert!(
        events[2]["download_url"]
            .as_str()
            .unwrap()
            .ends_with("/live/cam/20261202-063700-123.flv")
    );
}

/// A server whose project has an RTC app whose record callback goes to a receiver, signed
/// with [`AUTH_KEY`].
struct Rtc {
    /// The server, receiver and record dir, without Live's config.
    base: Live,
    app_id: String,
}

impl Rtc {
    async fn start() -> Self {
        let base = Live::without_callbacks().await;
        let (status, app) = base
            .server
            .post_with_token(&base.token, "/v2/apps", &json!({"app_name": "studio"}))
            .await;
        assert_eq!(status, 201, "{app}");
        let app_id = app["app_id"].as_str().unwrap().to_owned();
        let response = base
            .server
            .http
            .put(format!(
                "{}/v2/apps/{app_id}/record-callback",
                base.server.base
            ))
            .header("x-auth-token", &base.token)
            .json(&json!({"url": base.receiver.url(), "auth_key": AUTH_KEY}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Self { base, app_id }
    }

    fn record_dir(&self) -> PathBuf {
        self.base.record_dir()
    }

    /// Creates a MediaMTX source of the app over the record dir, with `extra` fields;
    /// returns its JSON.
    async fn mediamtx_source(&self, extra: Value) -> Value {
        let mut body = json!({"engine": "mediamtx", "app_id": self.app_id,
            "record_dir": self.record_dir().to_str().unwrap(), "max_pause": "1s",
            "download_base": "https://cdn.example.com/vod"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, source) = self
            .base
            .server
            .post_with_token(&self.base.token, "/v1/p1/record/sources", &body)
            .await;
        assert_eq!(status, 201, "{source}");
        source
    }

    /// One recording of 3 s on the path `live/cam`: the hook commands of the docs'
    /// configuration, with `hook` as the source's hook URL, run as MediaMTX runs them
    /// (ready, segment create, segment complete, not ready) over a real segment.
    async fn record_one_segment(&self, hook: &str) {
        let record_dir = self.record_dir();
        let yml = media::render(
            "mediamtx.yml",
            &[
                ("HOOK_URL", hook),
                ("RECORD_DIR", record_dir.to_str().unwrap()),
            ],
        );
        let hooks = media::mediamtx_hooks(&yml);
        let command = |name: &str| {
            hooks
                .iter()
                .find(|(key, _)| key == name)
                .unwrap_or_else(|| panic!("{name} in mediamtx.yml"))
                .1
                .clone()
        };
        let segment = record_dir.join("live/cam/2026-12-02_06-37-00-123456.mp4");
        std::fs::create_dir_all(segment.parent().unwrap()).unwrap();
        media::write_recording(&segment, Format::Mp4, 3).await;
        let segment_path = segment.to_str().unwrap();
        let env = [
            ("MTX_PATH", "live/cam"),
            ("MTX_QUERY", ""),
            ("MTX_SEGMENT_PATH", segment_path),
            ("MTX_SEGMENT_DURATION", "3.04"),
        ];
        for name in [
            "runOnReady",
            "runOnRecordSegmentCreate",
            "runOnRecordSegmentComplete",
            "runOnNotReady",
        ] {
            let out = media::run_mediamtx_command(&command(name), &env).await;
            assert!(out.status.success(), "{name}: {out:?}");
            assert_eq!(
                serde_json::from_slice::<Value>(&out.stdout).unwrap(),
                json!({"code": 0}),
                "{name}"
            );
        }
    }

    /// Waits until the session is over; returns each event once, its signature verified.
    async fn events_until_over(&self) -> Vec<Value> {
        let verifier = RtcVerifier::new(AUTH_KEY);
        let receiver = &self.base.receiver;
        let events = wait_until(receiver, || {
            let got = unique(&receiver.received());
            got.iter()
                .any(|r| r.json()["event_type"] == "CLOUD_RECORD_SERVER_OVER")
                .then_some(got)
        })
        .await;
        for r in &events {
            let headers = RtcHeaders {
                rand: Some(&r.header("x-rtc-rand")),
                timestamp: Some(&r.header("x-rtc-timestamp")),
                signature: Some(&r.header("x-rtc-signature")),
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            verifier.verify(headers, &r.body, now).unwrap();
        }
        let events: Vec<Value> = events.iter().map(Received::json).collect();
        assert_eq!(
            types(&events),
            [
                "RECORD_NEW_FILE_START",
                "RECORD_FILE_COMPLETE",
                "CLOUD_RECORD_SERVER_OVER"
            ]
        );
        for event in &events {
            assert_eq!(event["app_id"], self.app_id.as_str());
            assert_eq!(event["stream_name"], "cam");
            assert_eq!(event["room_id"], "live");
            assert_eq!(event["job_id"], events[0]["job_id"]);
        }
        events
    }
}

#[tokio::test]
async fn mediamtx_commands_report_rtc_recordings() {
    media::require_tools();
    let rtc = Rtc::start().await;
    let source = rtc.mediamtx_source(json!({})).await;
    assert_eq!(source["app_id"], rtc.app_id.as_str());
    assert!(source.get("publish_domain").is_none());
    rtc.record_one_segment(source["hook_url"].as_str().unwrap())
        .await;
    let events = rtc.events_until_over().await;
    check_file_complete(&events[1], &rtc.record_dir(), "MP4").await;
}

#[tokio::test]
async fn hostile_hooks_are_failed_without_opening_anything_outside_and_repeats_count_once() {
    media::require_tools();
    let live = Live::start().await;
    let source = live.source("nginx-rtmp", "1s").await;
    let hook = source["hook_url"].as_str().unwrap().to_owned();
    let dir = live.record_dir();
    let good = dir.join("cam-1.flv");
    media::write_recording(&good, Format::Flv, 2).await;
    std::fs::write(dir.join("notes.txt"), "not a recording\n").unwrap();
    let stub = dir.join("cam-2.flv");
    media::write_frameless_flv(&stub).await;
    std::os::unix::fs::symlink("/etc/hostname", dir.join("escape.flv")).unwrap();
    // A link to nothing outside is told apart from a link to something by nothing.
    std::os::unix::fs::symlink("/nonexistent/secret.flv", dir.join("dangling.flv")).unwrap();
    let post = |body: String| {
        let (http, hook) = (live.server.http.clone(), hook.clone());
        async move {
            http.post(hook)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let done = |path: &str| {
        format!(
            "app=live&flashver=FMLE&call=record_done&recorder=&name=cam&path={}",
            percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    assert_eq!(
        post("app=live&call=publish&name=cam&type=live".into()).await,
        200
    );
    let forged = [
        "/etc/passwd".to_owned(),
        format!("{}/../../etc/passwd", dir.display()),
        dir.join("escape.flv").display().to_string(),
        dir.join("dangling.flv").display().to_string(),
        dir.join("missing.flv").display().to_string(),
        dir.join("notes.txt").display().to_string(),
    ];
    for path in &forged {
        assert_eq!(post(done(path)).await, 200, "{path}");
    }
    let good_hook = done(good.to_str().unwrap());
    assert_eq!(post(good_hook.clone()).await, 200);
    assert_eq!(post(good_hook).await, 200, "a repeated hook is answered");
    // A file without a frame is neither complete nor failed: it is not reported.
    assert_eq!(post(done(stub.to_str().unwrap())).await, 200);
    // A publisher's own `name=`/`path=` after the module's are not the module's.
    assert_eq!(
        post(format!(
            "{}&path=%2Fetc%2Fshadow",
            done(good.to_str().unwrap())
        ))
        .await,
        200
    );
    assert_eq!(
        post("app=live&call=publish_done&name=cam".into()).await,
        200
    );

    let events = live.wait_for_type("RECORD_OVER").await;
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "RECORD_FAILED")
        .collect();
    assert_eq!(failed.len(), forged.len(), "{events:?}");
    let messages: Vec<&str> = failed
        .iter()
        .map(|e| e["error_message"].as_str().unwrap())
        .collect();
    assert!(
        messages[0].contains("outside the record directory") && messages[0].contains("not opened"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("outside the record directory"),
        "{messages:?}"
    );
    assert!(
        messages[2].contains("outside the record directory"),
        "a symlink out: {messages:?}"
    );
    assert!(
        messages[3].contains("outside the record directory"),
        "a dangling symlink out says what a symlink out says: {messages:?}"
    );
    assert!(messages[4].contains("does not exist"), "{messages:?}");
    // Herald's words, never ffprobe's ("Invalid data found when processing input").
    assert!(
        messages[5]
            .ends_with("is not a recording Herald reads (only .flv, .mp4 and .ts files are)"),
        "{messages:?}"
    );
    let completes = events
        .iter()
        .filter(|e| e["event_type"] == "RECORD_FILE_COMPLETE")
        .count();
    assert_eq!(
        completes, 1,
        "the repeated hook is accepted once: {events:?}"
    );
    let (_, shown) = live
        .server
        .get_with_token(
            &live.token,
            &format!("/v1/p1/record/sources/{}", source["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(shown["status"]["last_error"]["file"], forged[5], "{shown}");

    // Unknown secret, another engine's path, unreadable hooks, oversized bodies.
    let base = live.server.base.clone();
    let secret = hook.rsplit('/').next().unwrap();
    let http = &live.server.http;
    for (url, body, status) in [
        (
            format!("{base}/hooks/nginx-rtmp/nosuchsecret"),
            "call=publish&app=a&name=b".to_owned(),
            404,
        ),
        (format!("{base}/hooks/srs/{secret}"), "{}".to_owned(), 404),
        (format!("{base}/hooks/obs/{secret}"), "".to_owned(), 404),
        (hook.clone(), "call=publish&app=live".to_owned(), 400),
        (
            hook.clone(),
            "call=publish&app=live&name=a%00b".to_owned(),
            400,
        ),
        (
            hook.clone(),
            format!("call=publish&app=live&name={}", "x".repeat(300)),
            400,
        ),
        (hook.clone(), "x".repeat(100_000), 413),
    ] {
        let response = http.post(&url).body(body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{url}");
    }
}

#[tokio::test]
async fn sources_are_managed_by_api_and_cli_and_their_input_is_checked() {
    let live = Live::start().await;
    let (server, token) = (&live.server, &live.token);
    for (body, field) in [
        (
            json!({"engine": "obs", "publish_domain": DOMAIN, "record_dir": "/r"}),
            "engine",
        ),
        (
            json!({"engine": "srs", "publish_domain": DOMAIN, "record_dir": "rec"}),
            "record_dir",
        ),
        (
            json!({"engine": "srs", "record_dir": "/r"}),
            "publish_domain",
        ),
        (
            json!({"engine": "srs", "app_id": "0123456789abcdef01234567", "record_dir": "/r"}),
            "app_id",
        ),
        (
            json!({"engine": "srs", "publish_domain": DOMAIN, "record_dir": "/r", "max_pause": "forever"}),
            "max_pause",
        ),
        (
            json!({"engine": "srs", "publish_domain": DOMAIN, "record_dir": "/r", "download_base": "cdn"}),
            "download_base",
        ),
    ] {
        let (status, answer) = server
            .post_with_token(token, "/v1/p1/record/sources", &body)
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["error_code"], "LIVE.100011001");
        assert!(
            answer["error_msg"].as_str().unwrap().starts_with(field),
            "{answer}"
        );
    }
    let created = live.source("nginx-rtmp", "45s").await;
    assert_eq!(created["max_pause"], "45s");
    assert_eq!(created["download_base"], "https://cdn.example.com/vod/");
    let hook = created["hook_url"].as_str().unwrap();
    assert!(
        hook.starts_with(&format!("{}/hooks/nginx-rtmp/", server.base)),
        "{hook}"
    );

    // The CLI creates and lists into the same store, and the running server honours its
    // source at once.
    let out = server
        .herald(&[
            "sources",
            "create",
            "--project",
            "p1",
            "--engine",
            "srs",
            "--publish-domain",
            DOMAIN,
            "--record-dir",
            live.record_dir().join("srs").to_str().unwrap(),
            "--json",
        ])
        .await;
    let from_cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "id",
        "project_id",
        "engine",
        "publish_domain",
        "record_dir",
        "download_base",
        "max_pause",
        "hook_url",
    ] {
        assert!(from_cli.get(key).is_some(), "{key} in {from_cli}");
    }
    assert_eq!(from_cli["max_pause"], "30s");
    assert_eq!(from_cli["download_base"], Value::Null);
    let cli_hook = hook_on(&server.base, &from_cli);
    let answer = server
        .http
        .post(&cli_hook)
        .json(&srs_hook("on_publish", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let listed = server
        .herald(&["sources", "list", "--project", "p1", "--json"])
        .await;
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 2);
    let (status, list) = server
        .get_with_token(token, "/v1/p1/record/sources?limit=1&offset=1")
        .await;
    assert_eq!((status, list["total"].clone()), (200, json!(2)), "{list}");
    assert_eq!(list["sources"][0]["id"], from_cli["id"]);
    assert_eq!(list["sources"][0]["status"]["open_sessions"], 1);

    // Another project sees none of them; deleting one stops its hook at once.
    let other = server.token("p2").await;
    let (status, _) = server
        .get_with_token(
            &other,
            &format!("/v1/p2/record/sources/{}", created["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, 404);
    server
        .herald(&["sources", "delete", from_cli["id"].as_str().unwrap()])
        .await;
    let answer = server
        .http
        .post(&cli_hook)
        .json(&srs_hook("on_unpublish", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let response = server
        .http
        .delete(format!(
            "{}/v1/p1/record/sources/{}",
            server.base,
            created["id"].as_str().unwrap()
        ))
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (_, list) = server.get_with_token(token, "/v1/p1/record/sources").await;
    assert_eq!(list["total"], 0);
}

/// A container that claimed ~3.9e11 s made the tracker panic: it ended silently, and
/// every project's files waited forever. Such a file is now RECORD_FAILED with a reason,
/// and the tracker goes on (the session still ends).
#[tokio::test]
async fn a_file_with_an_absurd_duration_is_failed_and_stops_nothing() {
    let tools = tempfile::tempdir().unwrap();
    let lying = tools.path().join("ffprobe");
    std::fs::write(
        &lying,
        "#!/bin/sh
case \"$*\" in *-version*) exit 0;; esac
cat >/dev/null
\
         echo '{\"streams\": [{\"codec_type\": \"video\", \"width\": 640, \"height\": 360, \"nb_read_packets\": \"50\"}], \"format\": {\"format_name\": \"flv\", \"duration\": \"390000000000.0\"}}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&lying, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut live = Live::start().await;
    // The same project and config, on a server whose ffprobe lies about durations.
    live.server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.ffprobe = lying.clone();
    })
    .await;
    live.token = live.server.token("p1").await;
    let (status, body) = live
        .server
        .post_with_token(
            &live.token,
            "/v1/p1/record/callbacks",
            &json!({"publish_domain": DOMAIN, "app": "*", "notify_callback_url": live.receiver.url(),
                    "notify_event_subscription": ALL_LIVE, "sign_type": "HMACSHA256", "key": KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let source = live.source("nginx-rtmp", "1s").await;
    let hook = source["hook_url"].as_str().unwrap().to_owned();
    let file = live.record_dir().join("cam-1.flv");
    std::fs::write(&file, b"FLV, or so it says").unwrap();
    live.nginx_session(&hook, &[file]).await;
    let events = live.wait_for_type("RECORD_OVER").await;
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "RECORD_FAILED")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    let message = failed[0]["error_message"].as_str().unwrap();
    assert!(message.contains("more than any recording"), "{message}");
}

/// ffprobe once opened whatever absolute paths an HLS playlist or a concat list in the
/// record dir listed. Only the containers the engines write are read now, each with its
/// demuxer forced, so a playlist reaches nothing, whatever its name.
#[tokio::test]
async fn playlists_cannot_lead_ffprobe_out_of_the_record_dir() {
    media::require_tools();
    let live = Live::start().await;
    let source = live.source("nginx-rtmp", "1s").await;
    let hook = source["hook_url"].as_str().unwrap().to_owned();
    let dir = live.record_dir();
    // Another project's recording, outside this source's dir.
    let elsewhere = tempfile::tempdir().unwrap();
    let theirs = elsewhere.path().canonicalize().unwrap().join("theirs.ts");
    media::write_recording(&theirs, Format::Ts, 2).await;
    let playlist = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nfile:{0}\n#EXTINF:2.0,\n{0}\n#EXT-X-ENDLIST\n",
        theirs.display()
    );
    let concat = format!("ffconcat version 1.0\nfile '{}'\n", theirs.display());
    let files = [
        ("list.m3u8", playlist.clone()),
        ("live.m3u8", playlist.replace("#EXT-X-ENDLIST\n", "")),
        ("list.ffconcat", concat.clone()),
        ("playlist.ts", playlist),
        ("concat.mp4", concat),
    ];
    for (name, text) in &files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let paths: Vec<PathBuf> = files.iter().map(|(name, _)| dir.join(name)).collect();
    live.nginx_session(&hook, &paths).await;
    let events = live.wait_for_type("RECORD_OVER").await;
    assert!(
        !events
            .iter()
            .any(|e| e["event_type"] == "RECORD_FILE_COMPLETE"),
        "a playlist was followed out of the record dir: {events:?}"
    );
    let failed = events
        .iter()
        .filter(|e| e["event_type"] == "RECORD_FAILED")
        .count();
    assert_eq!(failed, files.len(), "{events:?}");
}

/// POSTs an SRS source over `dir` for `project`.
async fn create(server: &TestServer, token: &str, project: &str, dir: &str) -> (u16, Value) {
    let body = json!({"engine": "srs", "publish_domain": DOMAIN, "record_dir": dir});
    server
        .post_with_token(token, &format!("/v1/{project}/record/sources"), &body)
        .await
}

/// A project's token once made Herald open and ffprobe any file on the server (`/`,
/// `master.key`, another project's recordings). Record dirs are now confined to the
/// operator's roots, none by default, and no two projects' dirs overlap.
#[tokio::test]
async fn record_dirs_are_confined_to_the_operators_roots_and_never_overlap() {
    let refused = |(status, answer): (u16, Value), why: &str| {
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error_code"], "LIVE.100011001", "{answer}");
        let message = answer["error_msg"].as_str().unwrap();
        assert!(message.starts_with("record_dir"), "{answer}");
        assert!(message.contains(why), "{why}: {answer}");
    };

    // No roots: every source is refused, and the message says how to allow one.
    let closed = TestServer::start_with(|s| s.record_roots = Default::default()).await;
    let token = closed.token("p1").await;
    refused(
        create(&closed, &token, "p1", "/").await,
        "HERALD_RECORD_ROOTS",
    );
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let root_str = root_path.to_str().unwrap();
    refused(
        create(&closed, &token, "p1", root_str).await,
        "HERALD_RECORD_ROOTS",
    );

    let server = TestServer::start_with(|s| {
        s.record_roots =
            herald_core::source::RecordRoots::parse_list("record_roots", root_str).unwrap();
    })
    .await;
    let (t1, t2) = (server.token("p1").await, server.token("p2").await);
    for outside in ["/", "/etc", &common::test_record_root()] {
        refused(create(&server, &t1, "p1", outside).await, root_str);
    }
    std::os::unix::fs::symlink("/etc", root_path.join("etc-link")).unwrap();
    let link = root_path.join("etc-link");
    refused(
        create(&server, &t1, "p1", link.to_str().unwrap()).await,
        "symbolic link",
    );
    let p1_dir = root_path.join("p1");
    let (status, body) = create(&server, &t1, "p1", p1_dir.to_str().unwrap()).await;
    assert_eq!(status, 201, "{body}");
    // The same project may nest its own dirs; another project may not come near them.
    let (status, body) = create(&server, &t1, "p1", p1_dir.join("b").to_str().unwrap()).await;
    assert_eq!(status, 201, "{body}");
    for near in [p1_dir.clone(), p1_dir.join("sub"), root_path.clone()] {
        refused(
            create(&server, &t2, "p2", near.to_str().unwrap()).await,
            "another project",
        );
    }
    let p2_dir = root_path.join("p2");
    let (status, body) = create(&server, &t2, "p2", p2_dir.to_str().unwrap()).await;
    assert_eq!(status, 201, "{body}");
    // The CLI is held to the same rules.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["sources", "create", "--project", "p1", "--engine", "srs"])
        .args([
            "--publish-domain",
            DOMAIN,
            "--record-dir",
            "/etc",
            "--data-dir",
        ])
        .arg(server.data_dir.path())
        .env("HERALD_RECORD_ROOTS", root_str)
        .envs(
            std::env::var("HERALD_TEST_BACKEND")
                .ok()
                .filter(|b| b == "postgres")
                .map(|_| ("HERALD_DATABASE_URL", server.database_url().unwrap())),
        )
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("record_dir") || stderr.contains("record-dir"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_public_url_setting_makes_the_hook_url() {
    let data_dir = tempfile::tempdir().unwrap();
    let record_dir = tempfile::tempdir().unwrap();
    let record_dir = record_dir.path().canonicalize().unwrap();
    let out = common::run_cli_with(
        data_dir.path(),
        &[
            "sources",
            "create",
            "--project",
            "p1",
            "--engine",
            "mediamtx",
            "--publish-domain",
            DOMAIN,
            "--record-dir",
            record_dir.to_str().unwrap(),
            "--max-pause",
            "2m",
            "--json",
        ],
        &[("HERALD_PUBLIC_URL", "https://herald.example.com/")],
    )
    .await;
    let source: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hook = source["hook_url"].as_str().unwrap();
    assert!(
        hook.starts_with("https://herald.example.com/hooks/mediamtx/"),
        "{hook}"
    );
    assert_eq!(hook.rsplit('/').next().unwrap().len(), 32);
    assert_eq!(source["max_pause"], "120s");
}

/// A data dir for `herald serve` run as a process: a token for p1 and an nginx-rtmp source
/// made by the CLI, over a record dir that holds one real recording, `cam-1.flv`.
struct Offline {
    data_dir: tempfile::TempDir,
    _record_dir: tempfile::TempDir,
    token: String,
    source: Value,
    file: PathBuf,
}

impl Offline {
    async fn new(max_pause: &str) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let record = tempfile::tempdir().unwrap();
        let record_dir = record.path().canonicalize().unwrap();
        let token = cli_token(data_dir.path(), "p1").await;
        let source = cli_json(
            data_dir.path(),
            &[
                "sources",
                "create",
                "--project",
                "p1",
                "--engine",
                "nginx-rtmp",
                "--publish-domain",
                DOMAIN,
                "--record-dir",
                record_dir.to_str().unwrap(),
                "--max-pause",
                max_pause,
                "--json",
            ],
        )
        .await;
        let file = record_dir.join("cam-1.flv");
        media::write_recording(&file, Format::Flv, 2).await;
        Self {
            data_dir,
            _record_dir: record,
            token,
            source,
            file,
        }
    }

    /// Sends nginx-rtmp's hooks, form-encoded, to the server at `base`; each must be a 200.
    async fn hooks(&self, base: &str, bodies: &[String]) {
        let hook = hook_on(base, &self.source);
        let http = reqwest::Client::new();
        for body in bodies {
            let status = http
                .post(&hook)
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "{body}");
        }
    }

    fn record_done(&self) -> String {
        format!(
            "app=live&call=record_done&name=cam&path={}",
            self.file.display()
        )
    }
}

/// kill -9 while a session waits for its max_pause: after a restart, the session still
/// ends with RECORD_OVER, and the file reported before or after the crash is reported once.
#[tokio::test]
async fn a_session_paused_at_a_kill_9_still_ends_after_restart() {
    media::require_tools();
    let offline = Offline::new("3s").await;
    let data_dir = offline.data_dir.path();
    let env = [("HERALD_RETRY_SCHEDULE", "0s,200ms,500ms,1s,1s")];
    let receiver = Receiver::ok().await;
    let (mut first, base) =
        spawn_serve(data_dir, &["--allow-private-targets"], &env, Stdio::null()).await;
    let client = TestServer::client_for(&base);
    let (status, _) = client
        .post_with_token(
            &offline.token,
            "/v1/p1/record/callbacks",
            &json!({"publish_domain": DOMAIN, "app": "live", "notify_callback_url": receiver.url(),
                    "notify_event_subscription": ALL_LIVE}),
        )
        .await;
    assert_eq!(status, 201);
    offline
        .hooks(
            &base,
            &[
                "app=live&call=publish&name=cam&type=live".to_owned(),
                offline.record_done(),
                "app=live&call=publish_done&name=cam".to_owned(),
            ],
        )
        .await;
    // The session now waits 3 s for a republish; the process dies in the middle of it and
    // stays down past the deadline.
    first.kill().await.unwrap();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_second, _) =
        spawn_serve(data_dir, &["--allow-private-targets"], &env, Stdio::null()).await;
    let events = wait_until(&receiver, || {
        let got: Vec<Value> = unique(&receiver.received())
            .iter()
            .map(Received::json)
            .collect();
        got.iter()
            .any(|e| e["event_type"] == "RECORD_OVER")
            .then_some(got)
    })
    .await;
    eprintln!(
        "after the kill at {:?}: {:?}",
        killed_at.elapsed(),
        types(&events)
    );
    assert_eq!(
        types(&events),
        [
            "RECORD_START",
            "RECORD_NEW_FILE_START",
            "RECORD_FILE_COMPLETE",
            // nginx-rtmp opened the next file when this one was done, before publish_done.
            "RECORD_NEW_FILE_START",
            "RECORD_OVER"
        ]
    );
    assert!(events.iter().all(|e| e["job_id"] == events[0]["job_id"]));
    assert_eq!(
        events[2]["file_size"],
        std::fs::metadata(&offline.file).unwrap().len()
    );
}

/// ffprobe is a run-time dependency: without it `herald serve` says so at start-up, and a
/// finished file waits to be read instead of being failed or lost.
#[tokio::test]
async fn without_ffprobe_serve_warns_and_files_wait() {
    use tokio::io::AsyncBufReadExt;
    media::require_tools();
    let offline = Offline::new("30s").await;
    let env = [("HERALD_FFPROBE", "/nonexistent/ffprobe")];
    let (mut serve, base) = spawn_serve(offline.data_dir.path(), &[], &env, Stdio::piped()).await;
    let mut stderr = tokio::io::BufReader::new(serve.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("ffprobe cannot be run") {
                return line;
            }
        }
        panic!("herald serve ended without warning")
    })
    .await
    .expect("no warning about ffprobe at start-up");
    assert!(warned.contains("WARN"), "{warned}");
    offline
        .hooks(
            &base,
            &[
                "app=live&call=publish&name=cam".to_owned(),
                offline.record_done(),
            ],
        )
        .await;
    let path = format!(
        "/v1/p1/record/sources/{}",
        offline.source["id"].as_str().unwrap()
    );
    // The tracker has tried the file (it logs that it waits) …
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("waits until ffprobe can be run") {
                return;
            }
        }
    })
    .await
    .expect("the tracker never tried the file");
    // … and it is still waiting, not failed.
    let client = TestServer::client_for(&base);
    let (_, shown) = client.get_with_token(&offline.token, &path).await;
    assert_eq!(shown["status"]["files_waiting"], 1, "{shown}");
    assert_eq!(shown["status"]["last_error"], Value::Null, "{shown}");
}

/// A source takes a record format and a bucket (SPEC §7.1) through the API and the CLI:
/// every refusal names its field, a private endpoint is refused unless private targets are
/// allowed, and the secret access key is never shown again.
#[tokio::test]
async fn sources_take_a_bucket_and_never_show_its_secret() {
    let live = Live::start().await;
    let (server, token) = (&live.server, &live.token);
    let dir = live.record_dir();
    let dir = dir.to_str().unwrap();
    let storage = json!({"endpoint": "http://127.0.0.1:3900", "region": "garage",
        "bucket": "recordings", "access_key_id": "GK31c2f218a2e44f485b94239e",
        "secret_access_key": "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d3d9ad3",
        "path_style": true});
    let with = |extra: Value| {
        let mut body = json!({"engine": "nginx-rtmp", "publish_domain": DOMAIN, "record_dir": dir,
            "storage": storage.clone()});
        for (k, v) in extra.as_object().unwrap() {
            if k == "storage" {
                for (sk, sv) in v.as_object().unwrap() {
                    body["storage"][sk] = sv.clone();
                }
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let app = {
        let (status, app) = server
            .post_with_token(token, "/v2/apps", &json!({"app_name": "rooms"}))
            .await;
        assert_eq!(status, 201, "{app}");
        app["app_id"].as_str().unwrap().to_owned()
    };
    for (body, field) in [
        (with(json!({"record_format": "AVI"})), "record_format"),
        (
            json!({"engine": "srs", "app_id": app, "record_dir": dir, "record_format": "FLV",
                   "storage": storage.clone()}),
            "record_format",
        ),
        (
            json!({"engine": "srs", "publish_domain": DOMAIN, "record_dir": dir, "record_format": "MP4"}),
            "record_format",
        ),
        (
            with(json!({"storage": {"object_prefix": "rec/{steam}"}})),
            "storage.object_prefix",
        ),
        (
            with(json!({"storage": {"bucket": "Not_A_Bucket"}})),
            "storage.bucket",
        ),
        (
            with(json!({"storage": {"secret_access_key": null}})),
            "storage.secret_access_key",
        ),
        (
            with(json!({"storage": {"endpoint": "https://s3.example.com/recordings"}})),
            "storage.endpoint",
        ),
        (
            with(json!({"storage": {"path_style": "yes"}})),
            "storage.path_style",
        ),
        (
            json!({"engine": "srs", "publish_domain": DOMAIN, "record_dir": dir, "storage": "s3"}),
            "storage",
        ),
    ] {
        let (status, answer) = server
            .post_with_token(token, "/v1/p1/record/sources", &body)
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error_code"], "LIVE.100011001");
        assert!(
            answer["error_msg"].as_str().unwrap().starts_with(field),
            "{field}: {answer}"
        );
    }

    let (status, created) = server
        .post_with_token(
            token,
            "/v1/p1/record/sources",
            &with(json!({"record_format": "mp4", "storage": {"delete_local": true}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["record_format"], "MP4");
    assert_eq!(
        created["storage"],
        json!({"endpoint": "http://127.0.0.1:3900", "region": "garage", "bucket": "recordings",
            "access_key_id": "GK31c2f218a2e44f485b94239e", "secret_access_key": null,
            "secret_access_key_set": true, "path_style": true,
            "object_prefix": herald_core::storage::DEFAULT_LIVE_PREFIX, "delete_local": true})
    );
    let id = created["id"].as_str().unwrap();
    let (status, shown) = server
        .get_with_token(token, &format!("/v1/p1/record/sources/{id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["storage"], created["storage"]);
    let (_, listed) = server.get_with_token(token, "/v1/p1/record/sources").await;
    assert!(
        !listed.to_string().contains("b892c0665f0ada8a"),
        "the secret is listed: {listed}"
    );

    // Without --allow-private-targets, a loopback endpoint is refused as a callback URL is.
    let strict = TestServer::start().await;
    let strict_token = strict.token("p1").await;
    let (status, answer) = strict
        .post_with_token(&strict_token, "/v1/p1/record/sources", &with(json!({})))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error_msg"]
            .as_str()
            .unwrap()
            .starts_with("storage.endpoint"),
        "{answer}"
    );

    // HLS, for Live and for RTC (each source in a record dir of its own).
    for body in [
        with(json!({"record_format": "hls", "record_dir": format!("{dir}/hls-live")})),
        json!({"engine": "mediamtx", "app_id": app, "record_dir": format!("{dir}/hls-rtc"),
               "record_format": "HLS", "storage": storage.clone()}),
    ] {
        let (status, created) = server
            .post_with_token(token, "/v1/p1/record/sources", &body)
            .await;
        assert_eq!(status, 201, "{body}: {created}");
        assert_eq!(created["record_format"], "HLS");
    }

    // The CLI: the secret from a file, an RTC app's source in MP4 with its default keys.
    let secret_file = live.record_dir.path().join("secret");
    std::fs::write(&secret_file, "cli-secret-access-key-0123\n").unwrap();
    let out = server
        .herald(&[
            "sources",
            "create",
            "--project",
            "p1",
            "--engine",
            "mediamtx",
            "--app-id",
            &app,
            "--record-dir",
            live.record_dir().join("rtc").to_str().unwrap(),
            "--record-format",
            "MP4",
            "--storage-endpoint",
            "https://obs.cn-north-4.myhuaweicloud.com",
            "--storage-region",
            "cn-north-4",
            "--bucket",
            "rtc-recordings",
            "--access-key-id",
            "AKCLI",
            "--secret-access-key-file",
            secret_file.to_str().unwrap(),
            "--json",
        ])
        .await;
    let from_cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_cli["record_format"], "MP4");
    assert_eq!(from_cli["storage"]["secret_access_key"], Value::Null);
    assert_eq!(from_cli["storage"]["secret_access_key_set"], true);
    assert_eq!(from_cli["storage"]["path_style"], false);
    assert_eq!(
        from_cli["storage"]["object_prefix"],
        herald_core::storage::DEFAULT_RTC_PREFIX
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("cli-secret-access-key"));

    // A refused flag is named as typed.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "sources",
            "create",
            "--project",
            "p1",
            "--engine",
            "srs",
            "--publish-domain",
            DOMAIN,
            "--record-dir",
            live.record_dir().join("cli2").to_str().unwrap(),
            "--storage-endpoint",
            "https://obs.cn-north-4.myhuaweicloud.com",
            "--storage-region",
            "cn-north-4",
            "--bucket",
            "b",
            "--access-key-id",
            "AK",
            "--secret-access-key-file",
            secret_file.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(server.data_dir.path())
        .env("HERALD_RECORD_ROOTS", common::test_record_root())
        .envs(
            server
                .database_url()
                .map(|url| ("HERALD_DATABASE_URL", url)),
        )
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--bucket:"), "{stderr}");
}

/// A running Garage, after checking the media tools; `None` when garage is not installed
/// (the test then skips, saying so, as [`common::garage::program`] does).
async fn started_garage() -> Option<common::garage::Garage> {
    let program = common::garage::program()?;
    media::require_tools();
    Some(common::garage::Garage::start(program).await)
}

/// A Live source over `live`'s record dir storing in `garage` (path style), with `extra`
/// fields of the source (those under `"storage"` go into its storage) and `secret` as its
/// secret access key.
async fn stored_source(
    live: &Live,
    garage: &common::garage::Garage,
    secret: &str,
    extra: Value,
) -> Value {
    let mut body = json!({"engine": "nginx-rtmp", "publish_domain": DOMAIN,
        "record_dir": live.record_dir().to_str().unwrap(), "max_pause": "4s",
        "storage": {"endpoint": garage.endpoint, "region": common::garage::REGION,
            "bucket": common::garage::BUCKET, "access_key_id": garage.key_id,
            "secret_access_key": secret, "path_style": true}});
    for (k, v) in extra.as_object().unwrap() {
        match v.as_object() {
            Some(fields) if k == "storage" => {
                for (field, value) in fields {
                    body["storage"][field] = value.clone();
                }
            }
            _ => body[k] = v.clone(),
        }
    }
    let (status, source) = live
        .server
        .post_with_token(&live.token, "/v1/p1/record/sources", &body)
        .await;
    assert_eq!(status, 201, "{source}");
    source
}

/// A Live source storing in a fresh Garage, with `extra` fields, recording what ffmpeg
/// publishes for `seconds` through nginx-rtmp (files of `record_interval`); returns once
/// RECORD_OVER has arrived, with every event so far (no RECORD_FAILED among them). `None`: garage is not installed, and
/// the test skips.
async fn record_into_garage(
    extra: Value,
    record_interval: &str,
    seconds: u32,
) -> Option<(common::garage::Garage, Live, Vec<Value>)> {
    let garage = started_garage().await?;
    let live = Live::start().await;
    let source = stored_source(&live, &garage, &garage.secret, extra).await;
    let nginx = Nginx::start(
        source["hook_url"].as_str().unwrap(),
        &live.record_dir(),
        record_interval,
    )
    .await;
    media::publish(&nginx.rtmp_url("live", "cam"), seconds).await;
    let events = live.wait_for_type("RECORD_OVER").await;
    assert!(!types(&events).contains(&"RECORD_FAILED"), "{events:?}");
    Some((garage, live, events))
}

/// nginx-rtmp records FLV; the source stores MP4 in a real Garage. Each
/// RECORD_FILE_COMPLETE comes after its object is stored, with the OBS fields of it: the
/// object read back over S3 has the reported size, ffprobe reads it as MP4 of the reported
/// duration, its key is the default template's, and the local file is kept.
#[tokio::test]
async fn recordings_are_stored_in_garage_as_mp4_and_reported_with_the_obs_fields() {
    let Some((garage, live, events)) =
        record_into_garage(json!({"record_format": "MP4"}), "3s", 5).await
    else {
        return;
    };
    let completes = completes(&events);
    assert!(!completes.is_empty(), "{events:?}");
    let keys = garage.keys().await;
    assert_eq!(keys.len(), completes.len(), "one object per file: {keys:?}");
    for (n, complete) in completes.iter().enumerate() {
        assert_eq!(complete["record_format"], "MP4");
        let key = complete["obs_object"].as_str().unwrap();
        let prefix = format!("Record/{DOMAIN}/live/CONTINUOUS_RECORD/MP4/cam_");
        assert!(key.starts_with(&prefix) && key.ends_with(".mp4"), "{key}");
        check_obs_fields(complete, &garage, key, &garage.url_of(key));
        let object = garage.get(key).await;
        assert_eq!(complete["file_size"], object.len(), "{key}");
        check_stored_media(complete, &garage.save(&format!("{n}.mp4"), &object)).await;
    }
    let local: Vec<_> = std::fs::read_dir(live.record_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "flv"))
        .collect();
    assert!(!local.is_empty(), "the local files are kept");
}

/// The RECORD_FILE_COMPLETEs among `events`.
fn completes(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == "RECORD_FILE_COMPLETE")
        .collect()
}

/// A reported file's start as the key templates hold it: `{file_start_time}`
/// (`yyyy-MM-dd-HH-mm-ss`) and `{file_start_time_unix}`.
fn file_start(complete: &Value) -> (String, i64) {
    let text = complete["start_time"].as_str().unwrap();
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
    (
        text.trim_end_matches('Z').replace(['T', ':'], "-"),
        at.unix_timestamp(),
    )
}

/// The OBS fields of a file stored in `garage` at `key`, reported with `download_url`.
fn check_obs_fields(complete: &Value, garage: &common::garage::Garage, key: &str, url: &str) {
    assert_eq!(complete["obs_location"], garage.endpoint.as_str());
    assert_eq!(complete["obs_bucket"], common::garage::BUCKET);
    assert_eq!(complete["obs_object"], key);
    assert_eq!(complete["download_url"], url);
}

/// What ffprobe reads in a copy of what was stored (`file`) against the event: the
/// reported duration within 1 s, and the test pattern's 1280×720.
async fn check_stored_media(complete: &Value, file: &Path) {
    let probed = media::ffprobe_duration(file).await;
    let reported = complete["record_duration"].as_f64().unwrap();
    assert!((reported - probed).abs() <= 1.0, "{reported} vs {probed}");
    assert_eq!(
        (complete["width"].clone(), complete["height"].clone()),
        (json!(1280), json!(720))
    );
}

/// nginx-rtmp records FLV; the source stores HLS in Garage. Each file is a VOD playlist
/// under the template's key with its segments beside it, named
/// `{file_start_time_unix}_{file_end_time_unix}_{n}.ts`. Fetched back over S3 into a
/// directory, the playlist decodes to its end with the reported duration, and `file_size`
/// is every byte stored for it.
#[tokio::test]
async fn recordings_are_stored_in_garage_as_hls_playlists_with_their_segments() {
    let Some((garage, _live, events)) =
        record_into_garage(json!({"record_format": "HLS"}), "3s", 4).await
    else {
        return;
    };
    let completes = completes(&events);
    assert!(!completes.is_empty(), "{events:?}");
    let keys = garage.keys().await;
    let copies = tempfile::tempdir().unwrap();
    let mut objects = 0;
    for (n, complete) in completes.iter().enumerate() {
        assert_eq!(complete["record_format"], "HLS");
        let (stamp, start) = file_start(complete);
        let folder = format!("Record/{DOMAIN}/live/CONTINUOUS_RECORD/HLS/cam_{stamp}");
        let playlist_key = format!("{folder}/{stamp}.m3u8");
        check_obs_fields(
            complete,
            &garage,
            &playlist_key,
            &garage.url_of(&playlist_key),
        );
        let duration = complete["record_duration"].as_i64().unwrap();
        let mut segments: Vec<&str> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&format!("{folder}/")))
            .filter(|name| name.ends_with(".ts"))
            .collect();
        segments.sort_unstable();
        let mut named: Vec<String> = (0..segments.len())
            .map(|i| format!("{start}_{}_{i}.ts", start + duration))
            .collect();
        named.sort_unstable();
        assert!(
            !segments.is_empty(),
            "no segment beside {playlist_key}: {keys:?}"
        );
        assert_eq!(segments, named, "{keys:?}");
        objects += 1 + segments.len();
        // The bucket's layout, fetched as a player would: the playlist's relative names.
        let dir = copies.path().join(n.to_string());
        std::fs::create_dir(&dir).unwrap();
        let playlist = garage.get(&playlist_key).await;
        let mut stored = playlist.len();
        let playlist_file = dir.join(format!("{stamp}.m3u8"));
        std::fs::write(&playlist_file, &playlist).unwrap();
        let text = String::from_utf8(playlist).unwrap();
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{text}");
        assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
        for name in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            assert!(segments.contains(&name), "{name} in {text}");
            let segment = garage.get(&format!("{folder}/{name}")).await;
            stored += segment.len();
            std::fs::write(dir.join(name), segment).unwrap();
        }
        assert_eq!(complete["file_size"], stored, "{playlist_key}");
        media::decode_to_end(&playlist_file).await;
        check_stored_media(complete, &playlist_file).await;
    }
    assert_eq!(
        keys.len(),
        objects,
        "only the recordings' objects: {keys:?}"
    );
}

/// Without `record_format` the file is stored as nginx-rtmp wrote it: the object is the
/// local FLV byte for byte, reported as FLV under the template's `.flv` key.
#[tokio::test]
async fn recordings_without_a_format_are_stored_as_the_engine_wrote_them() {
    let Some((garage, live, events)) = record_into_garage(json!({}), "30s", 2).await else {
        return;
    };
    let completes = completes(&events);
    assert_eq!(completes.len(), 1, "{events:?}");
    let complete = completes[0];
    assert_eq!(complete["record_format"], "FLV");
    let (stamp, _) = file_start(complete);
    let key = format!("Record/{DOMAIN}/live/CONTINUOUS_RECORD/FLV/cam_{stamp}/{stamp}.flv");
    check_obs_fields(complete, &garage, &key, &garage.url_of(&key));
    let local: Vec<PathBuf> = std::fs::read_dir(live.record_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "flv"))
        .collect();
    assert_eq!(local.len(), 1, "{local:?}");
    let object = garage.get(&key).await;
    assert_eq!(complete["file_size"], object.len());
    assert!(
        object == std::fs::read(&local[0]).unwrap(),
        "the object differs from {:?}",
        local[0]
    );
    assert_eq!(garage.keys().await, [key]);
}

/// An RTC app's MediaMTX source storing MP4 in Garage: MediaMTX's fragmented MP4 is stored
/// under the RTC default template, and the RTC callback carries the OBS fields with
/// `download_url` on `download_base`.
#[tokio::test]
async fn rtc_recordings_are_stored_in_garage_under_the_rtc_template() {
    let Some(garage) = started_garage().await else {
        return;
    };
    let rtc = Rtc::start().await;
    let source = rtc
        .mediamtx_source(json!({"record_format": "MP4",
            "storage": {"endpoint": garage.endpoint, "region": common::garage::REGION,
                "bucket": common::garage::BUCKET, "access_key_id": garage.key_id,
                "secret_access_key": garage.secret, "path_style": true}}))
        .await;
    assert_eq!(source["record_format"], "MP4");
    rtc.record_one_segment(source["hook_url"].as_str().unwrap())
        .await;
    let events = rtc.events_until_over().await;
    let complete = &events[1];
    assert_eq!(complete["record_format"], "MP4");
    let (stamp, _) = file_start(complete);
    let key = format!("{}/MP4/cam_{stamp}/cam_{stamp}.mp4", rtc.app_id);
    check_obs_fields(
        complete,
        &garage,
        &key,
        &format!("https://cdn.example.com/vod/{key}"),
    );
    assert_eq!(garage.keys().await, [key.as_str()]);
    let object = garage.get(&key).await;
    assert_eq!(complete["file_size"], object.len());
    check_stored_media(complete, &garage.save("rtc.mp4", &object)).await;
    for time in ["start_time", "end_time"] {
        let text = complete[time].as_str().unwrap();
        assert!(text.len() == 20 && text.ends_with('Z'), "{time} {text}");
    }
}

/// Credentials the store refuses fail the file at once: RECORD_FAILED naming the bucket
/// and the store's code, the source's last_error, and the local file kept.
#[tokio::test]
async fn refused_credentials_fail_the_file_at_once_and_keep_it() {
    let Some(garage) = started_garage().await else {
        return;
    };
    let live = Live::start().await;
    let wrong = "0000000000000000000000000000000000000000000000000000000000000000";
    let source = stored_source(&live, &garage, wrong, json!({})).await;
    let started = std::time::Instant::now();
    let nginx = Nginx::start(
        source["hook_url"].as_str().unwrap(),
        &live.record_dir(),
        "30s",
    )
    .await;
    media::publish(&nginx.rtmp_url("live", "cam"), 3).await;
    let events = live.wait_for_type("RECORD_FAILED").await;
    assert!(started.elapsed() < Duration::from_secs(40), "not at once");
    let failed = events
        .iter()
        .find(|e| e["event_type"] == "RECORD_FAILED")
        .unwrap();
    let message = failed["error_message"].as_str().unwrap();
    assert!(message.contains("bucket recordings: "), "{message}");
    assert!(
        !types(&events).contains(&"RECORD_FILE_COMPLETE"),
        "{events:?}"
    );
    let (_, shown) = live
        .server
        .get_with_token(
            &live.token,
            &format!("/v1/p1/record/sources/{}", source["id"].as_str().unwrap()),
        )
        .await;
    let last = shown["status"]["last_error"]["message"].as_str().unwrap();
    assert!(last.contains("bucket recordings"), "{shown}");
    let file = shown["status"]["last_error"]["file"].as_str().unwrap();
    assert!(Path::new(file).is_file(), "the local file {file} is kept");
    assert!(garage.keys().await.is_empty());
}

/// Garage down while a file waits: the upload is retried, counted in the source's
/// `uploads_waiting` and the upload metrics, and once Garage is back the file is stored and
/// reported once.
#[tokio::test]
async fn an_upload_waits_for_a_stopped_store_and_is_reported_once() {
    let Some(mut garage) = started_garage().await else {
        return;
    };
    let live = Live::start().await;
    let source = stored_source(&live, &garage, &garage.secret, json!({})).await;
    let nginx = Nginx::start(
        source["hook_url"].as_str().unwrap(),
        &live.record_dir(),
        "30s",
    )
    .await;
    garage.stop().await;
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = common::metrics_text(&live.server.http, &live.server.base).await;
    media::publish(&nginx.rtmp_url("live", "cam"), 3).await;
    let id = source["id"].as_str().unwrap();
    let status = || async {
        let (_, shown) = live
            .server
            .get_with_token(&live.token, &format!("/v1/p1/record/sources/{id}"))
            .await;
        shown["status"].clone()
    };
    // The file has been read and its upload refused at least once: it waits for its bucket.
    tokio::time::timeout(Duration::from_secs(60), async {
        while status().await["uploads_waiting"].as_u64() < Some(1) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("uploads_waiting shows the file");
    let during = common::metrics_text(&live.server.http, &live.server.base).await;
    let retried = r#"herald_uploads_total{outcome="retried"}"#;
    assert!(
        metric(&during, retried) > metric(&before, retried),
        "{during}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !types(&live.events()).contains(&"RECORD_FILE_COMPLETE"),
        "reported before it was stored"
    );
    garage.restart().await;
    let events = live.wait_for_type("RECORD_OVER").await;
    let completes: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "RECORD_FILE_COMPLETE")
        .collect();
    assert_eq!(completes.len(), 1, "{events:?}");
    let all = live.receiver.received();
    let ids: Vec<_> = all
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("RECORD_FILE_COMPLETE"))
        .map(|r| r.header("herald-event-id"))
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 1, "one event");
    let key = completes[0]["obs_object"].as_str().unwrap();
    let size = garage.get(key).await.len();
    assert_eq!(completes[0]["file_size"], size);
    let after = status().await;
    assert_eq!(
        (&after["files_waiting"], &after["uploads_waiting"]),
        (&json!(0), &json!(0)),
        "{after}"
    );
    let done = common::metrics_text(&live.server.http, &live.server.base).await;
    let stored = r#"herald_uploads_total{outcome="stored"}"#;
    assert!(metric(&done, stored) > metric(&before, stored), "{done}");
    assert!(
        metric(&done, "herald_upload_bytes_total") - metric(&before, "herald_upload_bytes_total")
            >= size as f64,
        "{done}"
    );
    assert!(done.contains("herald_upload_duration_seconds"), "{done}");
}

/// A store that stays down past HERALD_UPLOAD_DEADLINE (5 s here): the file is retried
/// until then, then RECORD_FAILED naming the bucket, and the local file is kept.
#[tokio::test]
async fn an_upload_past_its_deadline_is_failed_and_the_file_kept() {
    media::require_tools();
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.upload_deadline = Duration::from_secs(5);
    })
    .await;
    let token = server.token("p1").await;
    let receiver = Receiver::ok().await;
    let (status, body) = server
        .post_with_token(
            &token,
            "/v1/p1/record/callbacks",
            &json!({"publish_domain": DOMAIN, "app": "*", "notify_callback_url": receiver.url(),
                    "notify_event_subscription": ALL_LIVE, "sign_type": "HMACSHA256", "key": KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let live = Live {
        server,
        token,
        receiver,
        record_dir: tempfile::tempdir().unwrap(),
    };
    // A loopback port nothing listens on: every request is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (status, source) = live
        .server
        .post_with_token(
            &live.token,
            "/v1/p1/record/sources",
            &json!({"engine": "nginx-rtmp", "publish_domain": DOMAIN,
                "record_dir": live.record_dir().to_str().unwrap(), "max_pause": "3s",
                "storage": {"endpoint": format!("http://127.0.0.1:{port}"), "region": "r",
                    "bucket": "gone", "access_key_id": "AK", "secret_access_key": "SK",
                    "path_style": true}}),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let nginx = Nginx::start(
        source["hook_url"].as_str().unwrap(),
        &live.record_dir(),
        "30s",
    )
    .await;
    media::publish(&nginx.rtmp_url("live", "cam"), 2).await;
    let events = live.wait_for_type("RECORD_OVER").await;
    let seen = types(&events);
    assert!(!seen.contains(&"RECORD_FILE_COMPLETE"), "{seen:?}");
    let failed = events
        .iter()
        .find(|e| e["event_type"] == "RECORD_FAILED")
        .unwrap_or_else(|| panic!("{seen:?}"));
    let message = failed["error_message"].as_str().unwrap();
    assert!(message.contains("bucket gone: "), "{message}");
    assert!(message.contains("retries"), "{message}");
    // RECORD_OVER waited for the file.
    let over = seen.iter().position(|t| *t == "RECORD_OVER").unwrap();
    let fail = seen.iter().position(|t| *t == "RECORD_FAILED").unwrap();
    assert!(fail < over, "{seen:?}");
    let (_, shown) = live
        .server
        .get_with_token(
            &live.token,
            &format!("/v1/p1/record/sources/{}", source["id"].as_str().unwrap()),
        )
        .await;
    let file = shown["status"]["last_error"]["file"].as_str().unwrap();
    assert!(Path::new(file).is_file(), "the local file {file} is kept");
}

/// `delete_local`: each local file is deleted once its object is stored and its event is
/// durable; the objects hold what was recorded, and no conversion is left behind.
#[tokio::test]
async fn delete_local_removes_each_file_once_it_is_stored() {
    let Some(garage) = started_garage().await else {
        return;
    };
    let live = Live::start().await;
    let source = stored_source(
        &live,
        &garage,
        &garage.secret,
        json!({"record_format": "MP4", "storage": {"delete_local": true}}),
    )
    .await;
    assert_eq!(source["storage"]["delete_local"], true, "{source}");
    let nginx = Nginx::start(
        source["hook_url"].as_str().unwrap(),
        &live.record_dir(),
        "2s",
    )
    .await;
    media::publish(&nginx.rtmp_url("live", "cam"), 5).await;
    let events = live.wait_for_type("RECORD_OVER").await;
    let completes: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "RECORD_FILE_COMPLETE")
        .collect();
    assert!(completes.len() >= 2, "{events:?}");
    for complete in &completes {
        let key = complete["obs_object"].as_str().unwrap();
        assert_eq!(complete["file_size"], garage.get(key).await.len(), "{key}");
    }
    // The last deletion follows the last event's commit: give it a moment.
    let left = || -> Vec<PathBuf> {
        std::fs::read_dir(live.record_dir())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect()
    };
    let deleted = tokio::time::timeout(Duration::from_secs(10), async {
        while !left().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        deleted.is_ok(),
        "the local files are deleted: {:?} {events:?}",
        left()
    );
    let temp = live.server.data_dir.path().join("upload-tmp");
    let temps: Vec<_> = std::fs::read_dir(&temp)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(temps.is_empty(), "conversions are removed: {temps:?}");
}

/// A TCP relay to `to` passing at most `bytes_per_second` through all its connections
/// together, each way: an upload through it takes seconds, and a kill -9 finds it under
/// way. Stops when dropped.
struct SlowRelay {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SlowRelay {
    async fn start(to: std::net::SocketAddr, bytes_per_second: u64) -> Self {
        use tokio::sync::Mutex;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // When the relay may next send: each chunk moves it on by the chunk's time.
        let next_free = std::sync::Arc::new(Mutex::new(tokio::time::Instant::now()));
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let Ok(outbound) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                for (from, into) in [
                    (
                        Box::new(in_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(out_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(out_read), Box::new(in_write)),
                ] {
                    let next_free = next_free.clone();
                    connections.spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let (mut from, mut into) = (from, into);
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let send_at = {
                                let mut next = next_free.lock().await;
                                let at = (*next).max(tokio::time::Instant::now());
                                *next = at
                                    + Duration::from_secs_f64(n as f64 / bytes_per_second as f64);
                                at
                            };
                            tokio::time::sleep_until(send_at).await;
                            if into.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = into.shutdown().await;
                    });
                }
            }
        });
        Self { addr, task }
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// kill -9 during a multipart upload (SPEC §7.1): a ~40 MB FLV goes up in 8 MiB parts
/// through a relay of 4 MB/s, and Herald dies once Garage shows the upload open. After a
/// restart on the same data dir the upload starts again: the object is complete and
/// byte-identical to the file, its RECORD_FILE_COMPLETE arrives with one event id, and no
/// multipart upload is left open in the bucket (as rclone, an independent client, lists
/// them).
#[tokio::test]
async fn a_multipart_upload_killed_mid_way_is_stored_once_and_leaves_no_open_upload() {
    let Some(garage) = started_garage().await else {
        return;
    };
    let s3: std::net::SocketAddr = garage
        .endpoint
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let relay = SlowRelay::start(s3, 4_000_000).await;

    let record = tempfile::tempdir().unwrap();
    let record_dir = record.path().canonicalize().unwrap();
    let file = record_dir.join("cam-1.flv");
    // Noise keeps H.264 from compressing the pattern: ~40 MB in 3 s, five parts or more.
    let made = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=1280x720:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", "3", "-vf", "noise=alls=40:allf=t", "-c:v", "libx264"])
        .args(["-preset", "ultrafast", "-qp", "22", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-f", "flv"])
        .arg(&file)
        .status()
        .await
        .unwrap();
    assert!(made.success());
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.len() > 32 << 20,
        "{} bytes: too few parts",
        bytes.len()
    );

    // The same store for both processes: the data dir, or a PostgreSQL schema when the
    // suite runs there (HERALD_TEST_BACKEND=postgres).
    let data_dir = tempfile::tempdir().unwrap();
    let schema = common::test_schema().await;
    let mut env = vec![("HERALD_RETRY_SCHEDULE", "0s,200ms,500ms,1s,1s")];
    if let Some(schema) = &schema {
        env.push(("HERALD_DATABASE_URL", schema.url.as_str()));
    }
    let args = ["--allow-private-targets"];
    let (mut first, base) = spawn_serve(data_dir.path(), &args, &env, Stdio::null()).await;
    let created = common::run_cli_with(
        data_dir.path(),
        &["tokens", "create", "--project", "p1", "--json"],
        &env,
    )
    .await;
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let token = created["token"].as_str().unwrap();
    let receiver = Receiver::ok().await;
    let client = TestServer::client_for(&base);
    let (status, body) = client
        .post_with_token(
            token,
            "/v1/p1/record/callbacks",
            &json!({"publish_domain": DOMAIN, "app": "live", "notify_callback_url": receiver.url(),
                    "notify_event_subscription": ALL_LIVE}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, source) = client
        .post_with_token(
            token,
            "/v1/p1/record/sources",
            &json!({"engine": "nginx-rtmp", "publish_domain": DOMAIN,
                "record_dir": record_dir.to_str().unwrap(), "max_pause": "1s",
                "storage": {"endpoint": format!("http://{}", relay.addr),
                    "region": common::garage::REGION, "bucket": common::garage::BUCKET,
                    "access_key_id": garage.key_id, "secret_access_key": garage.secret,
                    "path_style": true}}),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let hook = hook_on(&base, &source);
    for body in [
        "app=live&call=publish&name=cam&type=live".to_owned(),
        format!("app=live&call=record_done&name=cam&path={}", file.display()),
        "app=live&call=publish_done&name=cam".to_owned(),
    ] {
        let answer = client.http.post(&hook).body(body).send().await.unwrap();
        assert_eq!(answer.status(), 200);
    }

    // Herald dies once the upload is open in the bucket, parts still to come.
    let open = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let open = garage.open_uploads().await;
            if !open.is_empty() {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("no multipart upload was opened within 60 s");
    first.kill().await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    let key = open[0].0.clone();
    assert!(
        key.starts_with(&format!("Record/{DOMAIN}/live/CONTINUOUS_RECORD/FLV/cam_")),
        "{key}"
    );
    assert_eq!(garage.open_uploads().await, open, "left open by the kill");
    assert!(garage.keys().await.is_empty(), "stored before the kill");

    let (_second, base) = spawn_serve(data_dir.path(), &args, &env, Stdio::null()).await;
    // The new upload, under way through the relay, finds the old one gone: aborted
    // before it began. (Garage also forgets an older open upload of a key once a newer
    // one completes, which S3 does not; so the bucket is looked at while it is under way.)
    let stale = &open[0].1;
    let during = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let now = garage.open_uploads().await;
            if now.iter().any(|(_, id)| id != stale) {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the restarted process opened no upload within 120 s");
    assert!(
        during.iter().all(|(k, id)| k == &key && id != stale),
        "the upload the kill left open is still there: {during:?}"
    );
    // On PostgreSQL the dead process's lease (45 s) runs out before the step is taken again.
    let deadline = Instant::now() + Duration::from_secs(150);
    let events = loop {
        let events: Vec<Value> = unique(&receiver.received())
            .iter()
            .map(Received::json)
            .collect();
        if events.iter().any(|e| e["event_type"] == "RECORD_OVER") {
            break events;
        }
        assert!(Instant::now() < deadline, "no RECORD_OVER: {events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!types(&events).contains(&"RECORD_FAILED"), "{events:?}");
    let completes: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "RECORD_FILE_COMPLETE")
        .collect();
    assert_eq!(completes.len(), 1, "{events:?}");
    let ids: std::collections::HashSet<String> = receiver
        .received()
        .iter()
        .filter(|r| r.json()["event_type"] == "RECORD_FILE_COMPLETE")
        .map(|r| r.header("herald-event-id"))
        .collect();
    assert_eq!(ids.len(), 1, "one event: {ids:?}");
    assert_eq!(completes[0]["obs_object"], key.as_str());
    assert_eq!(completes[0]["file_size"], bytes.len());
    let stored = garage.get(&key).await;
    assert!(stored == bytes, "the object differs from the file");
    assert_eq!(garage.keys().await, [key.as_str()]);
    assert_eq!(
        garage.open_uploads().await,
        Vec::<(String, String)>::new(),
        "a multipart upload is left open"
    );
    // The restarted process counted its abort.
    let metrics = common::metrics_text(&client.http, &base).await;
    let aborted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_upload_stale_multipart_aborted_total "))
        .unwrap_or_else(|| panic!("no abort counted: {metrics}"))
        .parse()
        .unwrap();
    assert!(aborted >= 1.0, "{metrics}");
}
