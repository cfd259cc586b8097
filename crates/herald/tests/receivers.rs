//! The sample receivers of `docs/receivers` (Python, Node.js, Java) against a real Herald:
//! each one, run as its users would run it, verifies Live HMACSHA256, Live MD5 and RTC
//! callbacks, rejects a callback signed with another key (Herald records the 401), drops a
//! duplicate `Herald-Event-Id` and refuses a replayed RTC callback (the same signature
//! again). And `docs/receiving.md` must quote each receiver verbatim, so the doc cannot
//! drift from the tested code.
//!
//! Needs `python3`, `node` (20+) and `java` (JDK 17+) on PATH; a missing one fails the test.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestServer;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const HMAC_KEY: &str = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";
const MD5_KEY: &str = "Md5Md5kEy0123456789abcdefghijklm";
const WRONG_KEY: &str = "WrongKey0123456789abcdefghijklmn";
const RTC_KEY: &str = "8923ab8c2dcef4538923ab8c2dcef4538923ab8c";
/// Bound on every wait: a receiver starting (Java compiles the file first), a callback.
const WAIT: Duration = Duration::from_secs(20);
/// Text that JSON must escape, and non-ASCII: the receivers must sign what Herald signed.
/// (Control characters such as a tab are refused in names at ingest.)
const TRICKY: &str = "流 \"quoted\" back\\slash/solidus ü 😀 \u{2028}";

struct Lang {
    program: &'static str,
    file: &'static str,
    fence: &'static str,
}

const PYTHON: Lang = Lang {
    program: "python3",
    file: "receiver.py",
    fence: "python",
};
const NODE: Lang = Lang {
    program: "node",
    file: "receiver.js",
    fence: "js",
};
const JAVA: Lang = Lang {
    program: "java",
    file: "Receiver.java",
    fence: "java",
};

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

/// One receiver process, and the lines it prints.
struct Running {
    label: String,
    port: u16,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    child: Child,
}

impl Running {
    async fn start(lang: &Lang, key: &str, sign_type: &str, what: &str) -> Self {
        let label = format!("{} for {what}", lang.file);
        // The free port is found by binding and letting go: another process may take it
        // first, in which case the receiver exits and a new port is tried.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(lang.program)
                .arg(docs().join("receivers").join(lang.file))
                .env("PORT", port.to_string())
                .env("HERALD_KEY", key)
                .env("HERALD_SIGN_TYPE", sign_type)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run `{}` ({e}): the receivers test needs python3, node (20+) \
                         and java (JDK 17+) on PATH",
                        lang.program
                    )
                });
            let stderr = Arc::new(Mutex::new(String::new()));
            let mut pipe = child.stderr.take().unwrap();
            let sink = stderr.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf).await;
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf));
            });
            let mut running = Self {
                label: label.clone(),
                port,
                lines: BufReader::new(child.stdout.take().unwrap()).lines(),
                stderr,
                child,
            };
            match running.try_line().await {
                Some(line) if line == format!("LISTENING {port}") => return running,
                Some(line) => panic!("{label}: first line {line:?}, not LISTENING {port}"),
                None => {
                    let status = running.child.wait().await.unwrap();
                    eprintln!(
                        "{label} exited ({status}) before listening on {port}; retrying: {}",
                        running.stderr()
                    );
                }
            }
        }
        panic!("{label} did not start");
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next line, or `None` at the end of its output; panics after `WAIT`.
    async fn try_line(&mut self) -> Option<String> {
        match tokio::time::timeout(WAIT, self.lines.next_line()).await {
            Ok(line) => line.unwrap(),
            Err(_) => panic!(
                "{}: no line within {WAIT:?}; stderr: {}",
                self.label,
                self.stderr()
            ),
        }
    }

    async fn line(&mut self) -> String {
        match self.try_line().await {
            Some(line) => line,
            None => {
                // Let the stderr reader catch up before quoting it.
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "{}: exited ({:?}); stderr: {}",
                    self.label,
                    self.child.try_wait(),
                    self.stderr()
                )
            }
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/herald/callback", self.port)
    }
}

fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn created(
    server: &TestServer,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let response = server
        .http
        .request(method, format!("{}{path}", server.base))
        .header("x-auth-token", token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, answer) = common::json(response).await;
    assert!((200..300).contains(&status), "{path}: {status} {answer}");
    answer
}

/// Polls the delivery log for `event_id` until its one delivery is no longer pending.
async fn settled(server: &TestServer, token: &str, event_id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, log) = server
            .get_with_token(
                token,
                &format!("/v1/p1/record/deliveries?event_id={event_id}"),
            )
            .await;
        let delivery = &log["deliveries"][0];
        if matches!(delivery["status"].as_str(), Some("succeeded" | "dead")) {
            return delivery.clone();
        }
        assert!(Instant::now() < deadline, "{event_id}: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs straight to a receiver, as a duplicate or a replay would arrive.
async fn post_direct(to: &Running, headers: &[(&str, String)], body: Vec<u8>) -> u16 {
    let mut request = reqwest::Client::new().post(to.url()).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn exercise(lang: &Lang) {
    let started = Instant::now();
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.retry_schedule = common::schedule("0s"); // one attempt: a rejected callback is dead at once
    })
    .await;
    let token = server.token("p1").await;
    let (mut live_hmac, mut live_md5, mut rtc) = tokio::join!(
        Running::start(lang, HMAC_KEY, "HMACSHA256", "Live HMACSHA256"),
        Running::start(lang, MD5_KEY, "MD5", "Live MD5"),
        Running::start(lang, RTC_KEY, "HMACSHA256", "RTC"),
    );
    let startup = started.elapsed();

    use reqwest::Method as M;
    let configs = "/v1/p1/record/callbacks";
    for (domain, sign_type, key, url) in [
        ("hmac.example.com", "HMACSHA256", HMAC_KEY, live_hmac.url()),
        ("md5.example.com", "MD5", MD5_KEY, live_md5.url()),
        (
            "wrong.example.com",
            "HMACSHA256",
            WRONG_KEY,
            live_hmac.url(),
        ),
    ] {
        created(
            &server,
            &token,
            M::POST,
            configs,
            json!({"publish_domain": domain, "app": "*",
            "notify_callback_url": url, "sign_type": sign_type, "key": key,
            "notify_event_subscription": ["RECORD_NEW_FILE_START", "RECORD_FILE_COMPLETE", "RECORD_OVER"]}),
        )
        .await;
    }
    let app = created(
        &server,
        &token,
        M::POST,
        "/v2/apps",
        json!({"app_name": "receivers"}),
    )
    .await;
    let app_id = app["app_id"].as_str().unwrap();
    created(
        &server,
        &token,
        M::PUT,
        &format!("/v2/apps/{app_id}/record-callback"),
        json!({"url": rtc.url(), "auth_key": RTC_KEY}),
    )
    .await;

    let live = |id: &str, event_type: &str, domain: &str| {
        json!({"event_id": id, "event_type": event_type, "publish_domain": domain, "app": "live",
            "stream": TRICKY, "download_url": "https://obs.example.com/live/a.m3u8",
            "play_url": format!("https://vod.example.com/{TRICKY}.m3u8"), "file_size": 3957964})
    };
    let cases: [(&mut Running, &str, &str, Value); 3] = [
        (
            &mut live_hmac,
            "/v1/p1/record/events",
            "RECORD_FILE_COMPLETE",
            live("live-hmac", "RECORD_FILE_COMPLETE", "hmac.example.com"),
        ),
        (
            &mut live_md5,
            "/v1/p1/record/events",
            "RECORD_NEW_FILE_START",
            live("live-md5", "RECORD_NEW_FILE_START", "md5.example.com"),
        ),
        (
            &mut rtc,
            &format!("/v2/apps/{app_id}/record/events"),
            "CLOUD_RECORD_SERVER_OVER",
            json!({"event_id": "rtc", "event_type": "CLOUD_RECORD_SERVER_OVER", "stream_name": TRICKY, "room_id": "room01"}),
        ),
    ];
    for (receiver, path, event_type, event) in cases {
        created(&server, &token, M::POST, path, event.clone()).await;
        let id = event["event_id"].as_str().unwrap();
        assert_eq!(
            receiver.line().await,
            format!("VERIFIED {event_type} {id}"),
            "{}",
            receiver.label
        );
        let delivery = settled(&server, &token, id).await;
        assert_eq!(delivery["status"], "succeeded", "{delivery}");
        assert_eq!(
            delivery["attempts"][0]["response"],
            r#"{"status":1,"result":"success"}"#
        );
    }

    // Signed with another key: the receiver refuses it, and Herald logs the 401.
    created(
        &server,
        &token,
        M::POST,
        "/v1/p1/record/events",
        live("wrong-key", "RECORD_OVER", "wrong.example.com"),
    )
    .await;
    let line = live_hmac.line().await;
    assert!(line.starts_with("REJECTED "), "{}: {line}", live_hmac.label);
    let delivery = settled(&server, &token, "wrong-key").await;
    assert_eq!(
        (
            delivery["status"].as_str(),
            delivery["attempts"][0]["status_code"].as_u64()
        ),
        (Some("dead"), Some(401)),
        "{delivery}"
    );

    // At-least-once delivery: the same event again, freshly signed, is acknowledged and dropped.
    let expires = (now_secs() + 600).to_string();
    let sign = hmac_hex(
        HMAC_KEY,
        &[
            expires.as_bytes(),
            b"RECORD_FILE_COMPLETEhmac.example.comlivesame",
        ],
    );
    let again = json!({"project_id": "p1", "event_type": "RECORD_FILE_COMPLETE", "publish_domain": "hmac.example.com",
        "app": "live", "stream": "same", "auth_sign": sign, "auth_timestamp": expires});
    let status = post_direct(
        &live_hmac,
        &[("herald-event-id", "live-hmac".into())],
        again.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        (status, live_hmac.line().await),
        (200, "DUPLICATE live-hmac".to_owned())
    );

    // An RTC request replayed whole (same X-Rtc-Rand) is refused.
    let body = br#"{"app_id":"x","event_type":"RECORD_NEW_FILE_START","stream_name":"s"}"#.to_vec();
    let timestamp = now_secs().to_string();
    let headers = [
        ("Herald-Event-Id", "replayed".to_owned()),
        ("X-Rtc-Rand", "4242".to_owned()),
        (
            "X-Rtc-Signature",
            hmac_hex(RTC_KEY, &[b"4242", timestamp.as_bytes(), &body]),
        ),
        ("X-Rtc-Timestamp", timestamp),
    ];
    assert_eq!(post_direct(&rtc, &headers, body.clone()).await, 200);
    assert_eq!(rtc.line().await, "VERIFIED RECORD_NEW_FILE_START replayed");
    assert_eq!(post_direct(&rtc, &headers, body).await, 401);
    assert!(rtc.line().await.starts_with("REJECTED "), "{}", rtc.label);
    eprintln!(
        "{}: receivers up in {startup:?}, all checks in {:?}",
        lang.file,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receiver_verifies_herald_callbacks() {
    exercise(&PYTHON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_receiver_verifies_herald_callbacks() {
    exercise(&NODE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_receiver_verifies_herald_callbacks() {
    exercise(&JAVA).await;
}

/// The contents of every fenced block of `docs/receiving.md` opened with ```` ```info ````.
fn fenced_blocks(markdown: &str, info: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_end() == format!("```{info}") => current = Some(Vec::new()),
            Some(lines) if line.trim_end() == "```" => {
                blocks.push(lines.join("\n"));
                current = None;
            }
            Some(lines) => lines.push(line),
            None => {}
        }
    }
    blocks
}

#[test]
fn receiving_md_quotes_each_receiver_verbatim() {
    let doc = std::fs::read_to_string(docs().join("receiving.md")).unwrap();
    for lang in [PYTHON, NODE, JAVA] {
        let file = std::fs::read_to_string(docs().join("receivers").join(lang.file)).unwrap();
        let blocks = fenced_blocks(&doc, lang.fence);
        assert!(
            blocks
                .iter()
                .any(|b| b.trim_end_matches('\n') == file.trim_end_matches('\n')),
            "docs/receiving.md has no ```{} block equal to docs/receivers/{}: paste the file in again",
            lang.fence,
            lang.file
        );
    }
}
