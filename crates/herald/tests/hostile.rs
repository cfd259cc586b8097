//! What one tenant's receiver or input can do to the others (SPEC §4, §5): nothing. Each
//! hostile receiver is a raw socket that misbehaves at the byte level; beside it a healthy
//! endpoint must get each of its callbacks once and promptly, and the hostile answer must
//! be recorded as data (clean text, never a stalled worker). Hostile input gets the same
//! 400 on every store. `scripts/test` runs this file on both stores.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TestServer;
use common::receiver::Receiver;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a healthy endpoint may wait for its callbacks while a hostile one misbehaves:
/// far more than they take, far less than anything the hostile one could cause (its own
/// timeouts are 2 s, its retries 1 s and 1 h apart).
const PROMPTLY: Duration = Duration::from_secs(5);
const HOSTILE_EVENTS: usize = 3;
const HEALTHY_EVENTS: usize = 5;

/// What a hostile receiver does once it has read a callback.
#[derive(Clone, Copy, Debug)]
enum Hostility {
    /// Writes these bytes as its whole answer, then closes.
    Answer(&'static [u8]),
    /// 200 with a 50 MB body, written as fast as the socket takes it.
    HugeBody,
    /// 200 with a body that comes one byte a second.
    Trickle,
    /// Reads the request and never answers.
    Silent,
    /// Closes the connection without reading or answering.
    CloseAtOnce,
}

/// A raw socket server; counts the connections it accepted.
struct HostileReceiver {
    url: String,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request: the head, then as many body bytes as it declares.
async fn read_request(socket: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
    }
}

async fn misbehave(mut socket: TcpStream, hostility: Hostility) {
    if let Hostility::CloseAtOnce = hostility {
        return;
    }
    read_request(&mut socket).await;
    match hostility {
        Hostility::Answer(bytes) => {
            let _ = socket.write_all(bytes).await;
        }
        Hostility::HugeBody => {
            let size = 50 * 1024 * 1024;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            let block = vec![b'x'; 64 * 1024];
            for _ in 0..size / block.len() {
                if socket.write_all(&block).await.is_err() {
                    return;
                }
            }
        }
        Hostility::Trickle => {
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                .await;
            for _ in 0..100 {
                if socket.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Hostility::Silent => tokio::time::sleep(Duration::from_secs(3600)).await,
        Hostility::CloseAtOnce => {}
    }
}

impl HostileReceiver {
    async fn start(hostility: Hostility) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cb", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(misbehave(socket, hostility));
            }
        });
        Self {
            url,
            connections,
            task,
        }
    }
}

/// A server that may call loopback receivers, retrying after 1 s and then after an hour,
/// with a 2 s delivery timeout.
async fn server() -> (TestServer, String) {
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.retry_schedule = common::schedule("0s,1s,1h");
        s.delivery_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let token = server.token("p1").await;
    (server, token)
}

async fn config(server: &TestServer, token: &str, domain: &str, url: &str) {
    let body = json!({"publish_domain": domain, "app": "*", "notify_callback_url": url,
        "notify_event_subscription": ["RECORD_FILE_COMPLETE"]});
    let (status, created) = server
        .post_with_token(token, "/v1/p1/record/callbacks", &body)
        .await;
    assert_eq!(status, 201, "{created}");
}

fn batch(prefix: &str, domain: &str, n: usize) -> Value {
    let events: Vec<_> = (0..n)
        .map(|i| {
            json!({"event_id": format!("{prefix}{i}"), "event_type": "RECORD_FILE_COMPLETE",
                "publish_domain": domain, "app": "live", "stream": format!("{prefix}s{i}")})
        })
        .collect();
    json!({ "events": events })
}

/// The delivery of `event_id`, once `done` holds for it.
async fn delivery_when(
    server: &TestServer,
    token: &str,
    event_id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, log) = server
            .get_with_token(
                token,
                &format!("/v1/p1/record/deliveries?event_id={event_id}"),
            )
            .await;
        assert_eq!(status, 200, "{log}");
        let delivery = &log["deliveries"][0];
        if done(delivery) {
            return delivery.clone();
        }
        assert!(Instant::now() < deadline, "{event_id}: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `hostility` beside a healthy endpoint; returns the first hostile delivery once its
/// first attempt is recorded, and the hostile receiver (for its connection count).
async fn beside_a_healthy_endpoint(hostility: Hostility) -> (Value, HostileReceiver) {
    let (server, token) = server().await;
    let hostile = HostileReceiver::start(hostility).await;
    let healthy = Receiver::ok().await;
    config(&server, &token, "hostile.example.com", &hostile.url).await;
    config(&server, &token, "healthy.example.com", &healthy.url()).await;
    for body in [
        batch("x", "hostile.example.com", HOSTILE_EVENTS),
        batch("h", "healthy.example.com", HEALTHY_EVENTS),
    ] {
        let (status, answer) = server
            .post_with_token(&token, "/v1/p1/record/events", &body)
            .await;
        assert_eq!(status, 202, "{answer}");
    }
    let expected: HashSet<String> = (0..HEALTHY_EVENTS).map(|i| format!("h{i}")).collect();
    healthy.wait_for_ids(&expected, PROMPTLY).await;
    // Every healthy callback is recorded as delivered...
    for id in &expected {
        delivery_when(&server, &token, id, |d| d["status"] == "succeeded").await;
    }
    // ...and the hostile endpoint's outcomes are recorded too (none left in flight).
    let first = delivery_when(&server, &token, "x0", |d| {
        d["attempts"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    for i in 1..HOSTILE_EVENTS {
        delivery_when(&server, &token, &format!("x{i}"), |d| {
            d["attempts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    }
    // Once each, however long the hostile one kept its slots: nothing was sent again
    // because the recording of another outcome failed.
    let got = healthy.received();
    let ids: Vec<String> = got.iter().map(|r| r.header("herald-event-id")).collect();
    assert_eq!(ids.len(), HEALTHY_EVENTS, "healthy callbacks: {ids:?}");
    // At most the schedule's first two attempts per hostile event (0 s, then 1 s later).
    let calls = hostile.connections.load(Ordering::SeqCst);
    assert!(
        calls <= 2 * HOSTILE_EVENTS,
        "the hostile endpoint was called {calls} times"
    );
    (first, hostile)
}

fn attempt(delivery: &Value) -> &Value {
    &delivery["attempts"][0]
}

#[tokio::test]
async fn a_nul_byte_in_the_body_is_recorded_without_it() {
    let (d, _) = beside_a_healthy_endpoint(Hostility::Answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok\0ok",
    ))
    .await;
    assert_eq!(d["status"], "succeeded");
    assert_eq!(attempt(&d)["response"], "okok");
}

#[tokio::test]
async fn invalid_utf8_in_the_body_is_recorded_replaced() {
    let (d, _) = beside_a_healthy_endpoint(Hostility::Answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\na\xff\xfeb",
    ))
    .await;
    assert_eq!(d["status"], "succeeded");
    assert_eq!(attempt(&d)["response"], "a\u{fffd}\u{fffd}b");
}

#[tokio::test]
async fn a_nul_byte_in_a_header_is_a_failed_attempt() {
    let (d, _) = beside_a_healthy_endpoint(Hostility::Answer(
        b"HTTP/1.1 200 OK\r\nX-Bad: a\0b\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await;
    assert_ne!(d["status"], "succeeded");
    let error = attempt(&d)["error"].as_str().unwrap();
    assert!(error.starts_with("request error"), "{error}");
    assert!(!error.contains('\0'));
}

#[tokio::test]
async fn invalid_utf8_in_a_header_does_not_matter() {
    let (d, _) = beside_a_healthy_endpoint(Hostility::Answer(
        b"HTTP/1.1 200 OK\r\nX-Bad: \xff\xfe\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await;
    assert_eq!(d["status"], "succeeded");
    assert_eq!(attempt(&d)["response"], "ok");
}

#[tokio::test]
async fn a_50_mb_body_is_cut_to_its_first_kib() {
    let (d, _) = beside_a_healthy_endpoint(Hostility::HugeBody).await;
    assert_eq!(d["status"], "succeeded");
    assert_eq!(attempt(&d)["response"].as_str().unwrap().len(), 1024);
}

#[tokio::test]
async fn a_trickling_body_ends_at_the_timeout() {
    let (d, _) = beside_a_healthy_endpoint(Hostility::Trickle).await;
    // The status came at once; the body is what arrived before the 2 s timeout.
    assert_eq!(attempt(&d)["status_code"], 200);
    let head = attempt(&d)["response"].as_str().unwrap();
    assert!(head.len() < 10, "{head:?}");
}

#[tokio::test]
async fn no_answer_is_a_timeout() {
    let (d, _) = beside_a_healthy_endpoint(Hostility::Silent).await;
    assert_ne!(d["status"], "succeeded");
    assert_eq!(
        attempt(&d)["error"],
        "timeout: no answer within the delivery timeout"
    );
}

#[tokio::test]
async fn a_redirect_to_the_metadata_address_is_not_followed() {
    let (d, _) = beside_a_healthy_endpoint(Hostility::Answer(
        b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    assert_ne!(d["status"], "succeeded");
    assert_eq!(
        (
            attempt(&d)["status_code"].as_u64(),
            attempt(&d)["error"].as_str()
        ),
        (Some(302), Some("HTTP 302"))
    );
}

#[tokio::test]
async fn a_socket_closed_at_once_is_a_failed_attempt() {
    let (d, _) = beside_a_healthy_endpoint(Hostility::CloseAtOnce).await;
    assert_ne!(d["status"], "succeeded");
    assert!(attempt(&d)["status_code"].is_null());
    assert!(attempt(&d)["error"].as_str().is_some_and(|e| !e.is_empty()));
}

#[tokio::test]
async fn a_nonsense_status_line_is_a_failed_attempt() {
    let (d, _) = beside_a_healthy_endpoint(Hostility::Answer(
        b"HTTP/1.1 999 Nonsense\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    assert_ne!(d["status"], "succeeded");
    assert_eq!(attempt(&d)["status_code"], 999);
}

/// SPEC §5: the callback client ignores the environment's proxy variables (a proxy, not
/// the guarded resolver, would pick the address connected to). `herald serve` runs with
/// every proxy variable pointing at a receiver that must see nothing.
#[tokio::test]
async fn proxy_variables_are_ignored() {
    let proxy = Receiver::ok().await;
    let target = Receiver::ok().await;
    let proxy_url = format!("http://{}", proxy.addr);
    let env: Vec<(&str, &str)> = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .map(|name| (name, proxy_url.as_str()))
    .collect();
    let data_dir = tempfile::tempdir().unwrap();
    let (_serve, base) = common::spawn_serve(
        data_dir.path(),
        &["--allow-private-targets"],
        &env,
        std::process::Stdio::null(),
    )
    .await;
    let token = common::cli_token(data_dir.path(), "p1").await;
    let client = TestServer::client_for(&base);
    config(&client, &token, "direct.example.com", &target.url()).await;
    let (status, answer) = client
        .post_with_token(
            &token,
            "/v1/p1/record/events",
            &batch("d", "direct.example.com", 1),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    target.wait_for(1, PROMPTLY).await;
    assert!(
        proxy.received().is_empty(),
        "a callback went through the proxy"
    );
}

/// SPEC §4's field rules: the same 400, naming the field, on every store; nothing stored.
#[tokio::test]
async fn hostile_fields_are_refused_by_name_on_every_store() {
    let (server, token) = server().await;
    let long = |n: usize| "a".repeat(n);
    let base = json!({"event_type": "RECORD_FILE_COMPLETE", "publish_domain": "push.example.com",
        "app": "live", "stream": "s"});
    let cases = [
        (
            "stream",
            json!("nul\u{0}inside"),
            "stream: must not contain U+0000 (NUL)",
        ),
        ("app", json!("\u{0}"), "app: must not contain U+0000 (NUL)"),
        (
            "stream",
            json!(long(257)),
            "stream: must be at most 256 bytes",
        ),
        ("app", json!(long(257)), "app: must be at most 256 bytes"),
        (
            "publish_domain",
            json!(long(256)),
            "publish_domain: must be at most 255 bytes",
        ),
        (
            "download_url",
            json!(long(2049)),
            "download_url: must be at most 2048 bytes",
        ),
        (
            "play_url",
            json!(long(2049)),
            "play_url: must be at most 2048 bytes",
        ),
        (
            "error_message",
            json!(long(4097)),
            "error_message: must be at most 4096 bytes",
        ),
        (
            "job_id",
            json!("a\u{0}"),
            "job_id: must not contain U+0000 (NUL)",
        ),
    ];
    for (field, value, message) in cases {
        let mut body = base.clone();
        body[field] = value;
        let (status, answer) = server
            .post_with_token(&token, "/v1/p1/record/events", &body)
            .await;
        assert_eq!(
            (
                status,
                answer["error_code"].as_str(),
                answer["error_msg"].as_str()
            ),
            (400, Some("LIVE.100011001"), Some(message)),
            "{field}"
        );
    }
    // At the limits, accepted.
    let mut body = base.clone();
    body["stream"] = json!(long(256));
    body["publish_domain"] = json!(format!("{}.example.com", long(60)));
    body["error_message"] = json!(long(4096));
    let (status, answer) = server
        .post_with_token(&token, "/v1/p1/record/events", &body)
        .await;
    assert_eq!(status, 202, "{answer}");
    // In a batch, the field is named with its place.
    let body = json!({"events": [base.clone(), {"event_type": "RECORD_OVER", "publish_domain": "d",
        "app": "a", "stream": "\u{0}"}]});
    let (status, answer) = server
        .post_with_token(&token, "/v1/p1/record/events", &body)
        .await;
    assert_eq!(
        (status, answer["error_msg"].as_str()),
        (400, Some("events[1].stream: must not contain U+0000 (NUL)"))
    );
    // RTC events, config bodies, query strings and path ids: a 400 or a 404, never a 500.
    let (status, app) = server
        .post_with_token(&token, "/v2/apps", &json!({"app_name": "hostile"}))
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["app_id"].as_str().unwrap();
    let (status, answer) = server
        .post_with_token(
            &token,
            &format!("/v2/apps/{app_id}/record/events"),
            &json!({"event_type": "RECORD_FILE_COMPLETE", "stream_name": "s", "room_id": long(257)}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["error_msg"].as_str(),
        Some("InvalidParameterValue: room_id: must be at most 256 bytes")
    );
    let (status, answer) = server
        .post_with_token(
            &token,
            "/v1/p1/record/callbacks",
            &json!({"publish_domain": "push.example.com", "app": "*", "key": "\u{0}"}),
        )
        .await;
    assert_eq!(
        (status, answer["error_msg"].as_str()),
        (400, Some("key: must not contain U+0000 (NUL)"))
    );
    for (path, expected) in [
        ("/v1/p1/record/deliveries?event_id=%00", 400),
        ("/v1/p1/record/callbacks?publish_domain=%00", 400),
        ("/v1/p1/record/callbacks/%00", 404),
    ] {
        let (status, answer) = server.get_with_token(&token, path).await;
        assert_eq!(status, expected, "{path}: {answer}");
    }
    // Nothing of the refused events was stored: only the one accepted at the limits.
    let (_, events) = server
        .get_with_token(&token, "/v1/p1/record/deliveries")
        .await;
    assert_eq!(
        events["total"], 0,
        "no config matches, so no deliveries: {events}"
    );
}
