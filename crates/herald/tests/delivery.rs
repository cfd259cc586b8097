//! SPEC §4–§6 end to end: ingest, matching, rendering, signing, retries, order, isolation,
//! target safety, the delivery log. Callbacks go to real HTTP receivers in the test.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use common::TestServer;
use common::receiver::{Received, Receiver};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{Value, json};
use sha2::Sha256;

const KEY: &str = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";
const WAIT: Duration = Duration::from_secs(10);

/// A server that may call loopback receivers, with the given retry schedule.
async fn server(schedule: &str) -> (TestServer, String) {
    let schedule = schedule.to_owned();
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.retry_schedule = common::schedule(&schedule);
        s.delivery_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let token = server.token("p1").await;
    (server, token)
}

async fn config(server: &TestServer, token: &str, body: Value) -> String {
    let (status, created) = server
        .post_with_token(token, "/v1/p1/record/callbacks", &body)
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// A config sending push.example.com's `RECORD_OVER` events, any app, to `url`.
async fn record_over_to(server: &TestServer, token: &str, url: &str) -> String {
    config(
        server,
        token,
        json!({"publish_domain": "push.example.com", "app": "*", "notify_callback_url": url,
            "notify_event_subscription": ["RECORD_OVER"]}),
    )
    .await
}

async fn ingest(server: &TestServer, token: &str, body: Value) -> Value {
    let (status, answer) = server
        .post_with_token(token, "/v1/p1/record/events", &body)
        .await;
    assert_eq!(status, 202, "{answer}");
    answer
}

fn event(id: &str, event_type: &str, app: &str, stream: &str) -> Value {
    json!({"event_id": id, "event_type": event_type, "publish_domain": "push.example.com", "app": app, "stream": stream})
}

/// The seed formulas, written again here from seed 001 rather than taken from Herald.
fn expected_sign(sign_type: &str, body: &Value) -> String {
    let ts = body["auth_timestamp"].as_str().unwrap();
    if sign_type == "MD5" {
        return hex(&Md5::digest(format!("{KEY}{ts}").as_bytes()));
    }
    let field = |n: &str| body.get(n).and_then(Value::as_str).unwrap_or("").to_owned();
    let message = format!(
        "{ts}{}{}{}{}{}{}",
        field("event_type"),
        field("publish_domain"),
        field("app"),
        field("stream"),
        field("download_url"),
        field("play_url")
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls the delivery log until `done` holds for its answer to `query`.
async fn log_until(
    server: &TestServer,
    token: &str,
    query: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, log) = server
            .get_with_token(token, &format!("/v1/p1/record/deliveries?{query}"))
            .await;
        if done(&log) {
            return log;
        }
        assert!(std::time::Instant::now() < deadline, "{query}: {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn callbacks_carry_every_field_and_a_valid_signature() {
    let (server, token) = server("0s").await;
    let receiver = Receiver::ok().await;
    for (domain, sign_type) in [
        ("hmac.example.com", "HMACSHA256"),
        ("md5.example.com", "MD5"),
    ] {
        config(&server, &token, json!({"publish_domain": domain, "app": "*", "notify_callback_url": receiver.url(),
            "sign_type": sign_type, "key": KEY, "notify_event_subscription": ["RECORD_FILE_COMPLETE"]})).await;
    }
    config(&server, &token, json!({"publish_domain": "nokey.example.com", "app": "*", "notify_callback_url": receiver.url(),
        "notify_event_subscription": ["RECORD_FILE_COMPLETE"]})).await;
    let full = json!({
        "job_id": "dc0a1773-0cef-4a3b-9f2e-9a38fdb095d2", "event_type": "RECORD_FILE_COMPLETE",
        "publish_domain": "hmac.example.com", "app": "live", "stream": "mystream", "record_format": "HLS",
        "download_url": "https://obs.example.com/live/a.m3u8", "asset_id": "1a0d8e9bfae388c", "play_url": "https://vod.example.com/a.m3u8",
        "file_size": 3957964, "record_duration": 120, "start_time": "2020-03-08T14:10:25Z", "end_time": "2020-03-08T14:12:25Z",
        "width": 1280, "height": 720, "obs_location": "https://obs.example.com", "obs_bucket": "mybucket", "obs_object": "live/a.m3u8",
    });
    let mut md5_event = full.clone();
    md5_event["publish_domain"] = json!("md5.example.com");
    let mut unsigned = full.clone();
    unsigned["publish_domain"] = json!("nokey.example.com");
    let mut sparse = json!({"event_type": "RECORD_FILE_COMPLETE", "publish_domain": "hmac.example.com", "app": "live", "stream": "other"});
    let sent_at = now_secs();
    ingest(
        &server,
        &token,
        json!({"events": [full.clone(), md5_event, unsigned, sparse.clone()]}),
    )
    .await;

    let got = receiver.wait_for(4, WAIT).await;
    let by_domain_stream = |domain: &str, stream: &str| -> Received {
        got.iter()
            .find(|r| r.json()["publish_domain"] == domain && r.json()["stream"] == stream)
            .unwrap()
            .clone()
    };
    for (domain, sign_type) in [
        ("hmac.example.com", "HMACSHA256"),
        ("md5.example.com", "MD5"),
    ] {
        let r = by_domain_stream(domain, "mystream");
        assert_eq!(r.header("content-type"), "application/json; charset=utf-8");
        assert_eq!(r.header("herald-delivery-attempt"), "1");
        assert!(!r.header("herald-event-id").is_empty());
        let body = r.json();
        assert_eq!(body["project_id"], "p1");
        for (name, value) in full.as_object().unwrap() {
            if name != "publish_domain" {
                assert_eq!(&body[name], value, "{name}");
            }
        }
        let ts: i64 = body["auth_timestamp"].as_str().unwrap().parse().unwrap();
        assert!(
            (ts - (sent_at + 600)).abs() <= 5,
            "auth_timestamp {ts} is not send time + 600 s"
        );
        assert_eq!(
            body["auth_sign"],
            expected_sign(sign_type, &body),
            "{sign_type}"
        );
    }
    let plain = by_domain_stream("nokey.example.com", "mystream").json();
    assert!(plain.get("auth_sign").is_none() && plain.get("auth_timestamp").is_none());
    // Absent fields are left out, never null.
    let sparse_body = by_domain_stream("hmac.example.com", "other").json();
    sparse["project_id"] = json!("p1");
    let keys: Vec<_> = sparse_body
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !k.starts_with("auth_"))
        .cloned()
        .collect();
    assert_eq!(
        keys,
        [
            "project_id",
            "event_type",
            "publish_domain",
            "app",
            "stream"
        ]
    );
    assert!(
        sparse_body
            .as_object()
            .unwrap()
            .values()
            .all(|v| !v.is_null())
    );
}

#[tokio::test]
async fn exact_app_wins_over_wildcard_and_subscriptions_filter() {
    let (server, token) = server("0s").await;
    let exact = Receiver::ok().await;
    let wildcard = Receiver::ok().await;
    config(&server, &token, json!({"publish_domain": "push.example.com", "app": "live", "notify_callback_url": exact.url(),
        "notify_event_subscription": ["RECORD_FILE_COMPLETE"]})).await;
    config(&server, &token, json!({"publish_domain": "push.example.com", "app": "*", "notify_callback_url": wildcard.url(),
        "notify_event_subscription": ["RECORD_FILE_COMPLETE", "RECORD_OVER"]})).await;
    config(&server, &token, json!({"publish_domain": "nourl.example.com", "app": "*", "notify_event_subscription": ["RECORD_OVER"]})).await;
    let cases = [
        (event("a", "RECORD_FILE_COMPLETE", "live", "s"), 1),
        (event("b", "RECORD_FILE_COMPLETE", "vod", "s"), 1),
        // The exact config decides even though it does not subscribe: no fall-back to `*`.
        (event("c", "RECORD_OVER", "live", "s"), 0),
        (event("d", "RECORD_START", "vod", "s"), 0),
        (
            json!({"event_id": "e", "event_type": "RECORD_OVER", "publish_domain": "nourl.example.com", "app": "x", "stream": "s"}),
            0,
        ),
        (
            json!({"event_id": "f", "event_type": "RECORD_OVER", "publish_domain": "PUSH.example.com", "app": "other", "stream": "s"}),
            1,
        ),
    ];
    for (body, deliveries) in &cases {
        let answer = ingest(&server, &token, body.clone()).await;
        assert_eq!(answer["deliveries"], *deliveries, "{body}");
    }
    let exact_got = exact.wait_for(1, WAIT).await;
    let wildcard_got = wildcard.wait_for(2, WAIT).await;
    assert_eq!(exact_got[0].header("herald-event-id"), "a");
    let mut ids: Vec<_> = wildcard_got
        .iter()
        .map(|r| r.header("herald-event-id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["b", "f"]);
    // Another project never matches this project's configs.
    let other = server.token("p2").await;
    let (status, answer) = server
        .post_with_token(
            &other,
            "/v1/p2/record/events",
            &event("g", "RECORD_FILE_COMPLETE", "live", "s"),
        )
        .await;
    assert_eq!((status, answer["deliveries"].as_u64()), (202, Some(0)));
}

#[tokio::test]
async fn ingest_is_idempotent_and_refuses_bad_events_whole() {
    let (server, token) = server("0s").await;
    let receiver = Receiver::ok().await;
    record_over_to(&server, &token, &receiver.url()).await;
    let first = ingest(&server, &token, event("same", "RECORD_OVER", "live", "s")).await;
    let again = ingest(&server, &token, event("same", "RECORD_OVER", "live", "s")).await;
    assert_eq!(first, again);
    assert_eq!(first, json!({"event_id": "same", "deliveries": 1}));
    let generated = ingest(&server, &token, json!({"event_type": "RECORD_OVER", "publish_domain": "push.example.com", "app": "a", "stream": "t"})).await;
    assert!(!generated["event_id"].as_str().unwrap().is_empty());
    receiver.wait_for(2, WAIT).await;

    let good = event("later", "RECORD_OVER", "live", "s2");
    let bad_cases = vec![
        (
            json!({"events": [good.clone(), {"event_type": "RECORD_OVER", "publish_domain": "d", "app": "a"}]}),
            "events[1].stream",
        ),
        (
            json!({"events": [good.clone(), {"event_type": "NOPE", "publish_domain": "d", "app": "a", "stream": "s"}]}),
            "events[1].event_type",
        ),
        (
            json!({"event_type": "RECORD_OVER", "publish_domain": "d", "app": "a", "stream": "s", "file_size": "12"}),
            "file_size",
        ),
        (
            json!({"event_type": "RECORD_OVER", "publish_domain": "d", "app": "a", "stream": "s", "surprise": 1}),
            "surprise",
        ),
        (
            json!({"event_type": "RECORD_OVER", "publish_domain": "d", "app": "a", "stream": "s", "auth_sign": "x"}),
            "auth_sign",
        ),
        (json!({"events": vec![good.clone(); 1001]}), "events"),
        (json!([good.clone()]), "body"),
    ];
    for (body, field) in bad_cases {
        let (status, err) = server
            .post_with_token(&token, "/v1/p1/record/events", &body)
            .await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (400, Some("LIVE.100011001")),
            "{field}"
        );
        assert!(
            err["error_msg"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}: ")),
            "{err}"
        );
    }
    // Nothing of the refused batch was stored: its good event is new now.
    assert_eq!(ingest(&server, &token, good).await["deliveries"], 1);
    let (_, log) = server
        .get_with_token(&token, "/v1/p1/record/deliveries?event_id=later")
        .await;
    assert_eq!(log["total"], 1);
}

#[tokio::test]
async fn failures_are_retried_signed_afresh_and_hold_back_their_stream_only() {
    // Retries 1.1 s apart, so each attempt's auth_timestamp (whole seconds) differs.
    let (server, token) = server("0s,1100ms,1100ms").await;
    let script = Arc::new(|r: &Received, _n: usize| {
        let body = r.json();
        let failing = body["stream"] == "s1"
            && body["event_type"] == "RECORD_FILE_COMPLETE"
            && r.header("herald-delivery-attempt") != "3";
        (
            if failing {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            },
            Duration::ZERO,
        )
    });
    let receiver = Receiver::scripted(script).await;
    let other_endpoint = Receiver::ok().await;
    config(&server, &token, json!({"publish_domain": "push.example.com", "app": "*", "notify_callback_url": receiver.url(),
        "key": KEY, "notify_event_subscription": ["RECORD_FILE_COMPLETE", "RECORD_OVER"]})).await;
    config(&server, &token, json!({"publish_domain": "other.example.com", "app": "*", "notify_callback_url": other_endpoint.url(),
        "notify_event_subscription": ["RECORD_OVER"]})).await;
    ingest(&server, &token, json!({"events": [
        event("first", "RECORD_FILE_COMPLETE", "live", "s1"),
        event("second", "RECORD_OVER", "live", "s1"),
        event("elsewhere", "RECORD_OVER", "live", "s2"),
        {"event_id": "other-endpoint", "event_type": "RECORD_OVER", "publish_domain": "other.example.com", "app": "live", "stream": "s1"},
    ]})).await;

    let got = receiver.wait_for(5, WAIT).await;
    let order: Vec<_> = got
        .iter()
        .map(|r| {
            (
                r.header("herald-event-id"),
                r.header("herald-delivery-attempt"),
            )
        })
        .collect();
    let first: Vec<_> = got
        .iter()
        .filter(|r| r.header("herald-event-id") == "first")
        .collect();
    assert_eq!(
        first
            .iter()
            .map(|r| r.header("herald-delivery-attempt"))
            .collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    let stamps: Vec<_> = first
        .iter()
        .map(|r| r.json()["auth_timestamp"].clone())
        .collect();
    assert!(
        stamps[0] != stamps[1] && stamps[1] != stamps[2],
        "signatures were not renewed: {stamps:?}"
    );
    for r in &first {
        assert_eq!(
            r.json()["auth_sign"],
            expected_sign("HMACSHA256", &r.json())
        );
    }
    // The stream's next callback waited for the first to succeed...
    let pos = |id: &str, attempt: &str| {
        order
            .iter()
            .position(|o| o.0 == id && o.1 == attempt)
            .unwrap()
    };
    assert!(pos("second", "1") > pos("first", "3"), "{order:?}");
    // ...while another stream and another endpoint did not wait.
    assert!(pos("elsewhere", "1") < pos("first", "2"), "{order:?}");
    let other = other_endpoint.wait_for(1, WAIT).await;
    assert!(
        other[0].at < first[1].at,
        "the other endpoint waited for this one's retry"
    );

    let log = log_until(&server, &token, "event_id=first", |log| {
        log["deliveries"][0]["status"] == "succeeded"
    })
    .await;
    let attempts = &log["deliveries"][0]["attempts"];
    let codes: Vec<_> = attempts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 200]);
    assert_eq!(log["deliveries"][0]["status"], "succeeded");
    assert_eq!(attempts[0]["error"], "HTTP 500");
}

#[tokio::test]
async fn exhausted_deliveries_are_dead_until_retried_by_hand() {
    let (server, token) = server("0s,100ms").await;
    let answered = Arc::new(AtomicUsize::new(0));
    let healthy_after = answered.clone();
    // Fails the first two requests (both attempts of the first delivery), then succeeds.
    let receiver = Receiver::scripted(Arc::new(move |_r: &Received, n: usize| {
        healthy_after.fetch_add(1, Ordering::SeqCst);
        (
            if n < 2 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            },
            Duration::ZERO,
        )
    }))
    .await;
    record_over_to(&server, &token, &receiver.url()).await;
    ingest(&server, &token, json!({"events": [event("doomed", "RECORD_OVER", "live", "s"), event("next", "RECORD_OVER", "live", "s")]})).await;
    // Two failed attempts, then the dead delivery stops holding back its stream.
    let got = receiver.wait_for(3, WAIT).await;
    assert_eq!(got[2].header("herald-event-id"), "next");
    let dead = log_until(&server, &token, "status=dead", |log| log["total"] == 1).await;
    let delivery = &dead["deliveries"][0];
    assert_eq!(
        (
            delivery["event_id"].as_str(),
            delivery["attempts"].as_array().unwrap().len()
        ),
        (Some("doomed"), 2)
    );
    assert!(delivery["next_attempt_at"].is_null());

    let id = delivery["id"].as_str().unwrap();
    let (status, _) = server
        .post_with_token(
            &token,
            &format!("/v1/p1/record/deliveries/{id}/retry"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 202);
    let got = receiver.wait_for(4, WAIT).await;
    assert_eq!(
        (
            got[3].header("herald-event-id"),
            got[3].header("herald-delivery-attempt")
        ),
        ("doomed".into(), "3".into())
    );
    log_until(&server, &token, "status=succeeded&event_id=doomed", |log| {
        log["total"] == 1
    })
    .await;
    // Succeeded deliveries are not retried; unknown and foreign ids are 404.
    let (status, err) = server
        .post_with_token(
            &token,
            &format!("/v1/p1/record/deliveries/{id}/retry"),
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (400, Some("LIVE.100011001"))
    );
    let (status, _) = server
        .post_with_token(&token, "/v1/p1/record/deliveries/999999/retry", &json!({}))
        .await;
    assert_eq!(status, 404);
    let other = server.token("p2").await;
    let (status, _) = server
        .post_with_token(
            &other,
            &format!("/v1/p2/record/deliveries/{id}/retry"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, err) = server
        .get_with_token(&token, "/v1/p1/record/deliveries?status=lost")
        .await;
    assert_eq!(
        (
            status,
            err["error_msg"].as_str().map(|m| m.starts_with("status: "))
        ),
        (400, Some(true))
    );
}

#[tokio::test]
async fn slow_and_refused_endpoints_do_not_hold_up_a_healthy_one() {
    let (server, token) = server("0s,1h").await;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (now_in, peak_in) = (in_flight.clone(), peak.clone());
    // Never answers within the 2 s timeout.
    let slow = Receiver::scripted(Arc::new(move |_r: &Received, _n: usize| {
        let n = now_in.fetch_add(1, Ordering::SeqCst) + 1;
        peak_in.fetch_max(n, Ordering::SeqCst);
        (StatusCode::OK, Duration::from_secs(30))
    }))
    .await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        format!("http://{addr}/cb")
    };
    let healthy = Receiver::ok().await;
    for (domain, url) in [
        ("slow.example.com", slow.url()),
        ("refused.example.com", refused),
        ("healthy.example.com", healthy.url()),
    ] {
        config(
            &server,
            &token,
            json!({"publish_domain": domain, "app": "*", "notify_callback_url": url,
            "notify_event_subscription": ["RECORD_OVER"]}),
        )
        .await;
    }
    let batch = |domain: &str, n: usize| {
        let events: Vec<_> = (0..n)
            .map(|i| json!({"event_type": "RECORD_OVER", "publish_domain": domain, "app": "live", "stream": format!("s{i}")}))
            .collect();
        json!({ "events": events })
    };
    ingest(&server, &token, batch("slow.example.com", 200)).await;
    ingest(&server, &token, batch("refused.example.com", 200)).await;
    let started = std::time::Instant::now();
    ingest(&server, &token, batch("healthy.example.com", 100)).await;
    healthy.wait_for(100, WAIT).await;
    // All of them while the slow endpoint's first requests were still hanging.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "healthy callbacks took {:?}",
        started.elapsed()
    );
    let (_, refused_log) = server
        .get_with_token(&token, "/v1/p1/record/deliveries?status=failed&limit=1")
        .await;
    let error = refused_log["deliveries"][0]["attempts"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.starts_with("connect error") || error.starts_with("timeout"),
        "{error}"
    );
    // The per-endpoint cap: never more than 32 requests in flight to the slow endpoint.
    assert!(
        peak.load(Ordering::SeqCst) <= 32,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(slow.received().len(), 32);
}

/// The worker finds every delivery through the wake-ups of commits and of finished
/// attempts, never by waiting for its poll: with the poll an hour away, a backlog many
/// times what a claim may take for one endpoint (streams of several events each, so that
/// outcomes make the next ones due) still all arrives.
#[tokio::test]
async fn a_backlog_drains_without_waiting_for_the_poll() {
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.endpoint_concurrency = 2;
        s.poll_interval = Duration::from_secs(3600);
    })
    .await;
    let token = server.token("p1").await;
    let receiver = Receiver::ok().await;
    record_over_to(&server, &token, &receiver.url()).await;
    let mut expected = std::collections::HashSet::new();
    for round in 0..4 {
        let events: Vec<Value> = (0..500)
            .map(|i| {
                let id = format!("r{round}-e{i}");
                expected.insert(id.clone());
                json!({"event_id": id, "event_type": "RECORD_OVER", "publish_domain": "push.example.com",
                    "app": "live", "stream": format!("s{}", i % 50)})
            })
            .collect();
        ingest(&server, &token, json!({ "events": events })).await;
    }
    receiver
        .wait_for_ids(&expected, Duration::from_secs(60))
        .await;
}

/// A retry is sent when it comes due, not at the next poll: the worker learns its time
/// when the outcome that scheduled it is recorded.
#[tokio::test]
async fn retries_come_due_without_waiting_for_the_poll() {
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.retry_schedule = common::schedule("0s,300ms,300ms");
        s.poll_interval = Duration::from_secs(3600);
    })
    .await;
    let token = server.token("p1").await;
    let receiver = Receiver::scripted(Arc::new(|r: &Received, _n: usize| {
        let third = r.header("herald-delivery-attempt") == "3";
        let status = if third {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Duration::ZERO)
    }))
    .await;
    record_over_to(&server, &token, &receiver.url()).await;
    ingest(&server, &token, event("r", "RECORD_OVER", "live", "s")).await;
    let arrived = receiver.wait_for(3, Duration::from_secs(30)).await;
    let attempts: Vec<String> = (arrived.iter())
        .map(|r| r.header("herald-delivery-attempt"))
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
}

#[tokio::test]
async fn a_deleted_configs_waiting_deliveries_are_cancelled() {
    let (server, token) = server("0s").await;
    let receiver = Receiver::scripted(Arc::new(|_r: &Received, _n: usize| {
        (StatusCode::OK, Duration::from_millis(500))
    }))
    .await;
    let id = record_over_to(&server, &token, &receiver.url()).await;
    ingest(&server, &token, json!({"events": [event("one", "RECORD_OVER", "a", "s"), event("two", "RECORD_OVER", "a", "s"), event("three", "RECORD_OVER", "a", "s")]})).await;
    receiver.wait_for(1, WAIT).await;
    let response = server
        .http
        .delete(format!("{}/v1/p1/record/callbacks/{id}", server.base))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (_, cancelled) = server
        .get_with_token(&token, "/v1/p1/record/deliveries?status=cancelled")
        .await;
    let mut ids: Vec<_> = cancelled["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["three", "two"]);
    // The one already in flight finishes and is recorded.
    log_until(&server, &token, "event_id=one", |log| {
        log["deliveries"][0]["status"] == "succeeded"
    })
    .await;
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_at_send_time() {
    let server = TestServer::start_with(|s| s.retry_schedule = common::schedule("0s")).await;
    let token = server.token("p1").await;
    let receiver = Receiver::ok().await;
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let resolved: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 80))
        .unwrap()
        .collect();
    assert!(
        resolved
            .iter()
            .all(|a| herald_core::target::is_private_target(a.ip())),
        "this test needs the host name {host} to resolve to private addresses only: {resolved:?}"
    );
    // Not a literal IP nor `localhost`, so the config is accepted...
    let url = format!("http://{host}:{}/cb", receiver.addr.port());
    config(
        &server,
        &token,
        json!({"publish_domain": "push.example.com", "app": "*", "notify_callback_url": url,
        "notify_event_subscription": ["RECORD_OVER"]}),
    )
    .await;
    ingest(&server, &token, event("ssrf", "RECORD_OVER", "live", "s")).await;
    // ...but the address it resolves to is refused when the callback is sent.
    let log = log_until(&server, &token, "status=dead", |log| log["total"] == 1).await;
    let error = log["deliveries"][0]["attempts"][0]["error"]
        .as_str()
        .unwrap();
    assert!(error.contains("refused target"), "{error}");
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn metrics_are_exposed_with_bounded_labels() {
    let (server, token) = server("0s").await;
    let receiver = Receiver::ok().await;
    record_over_to(&server, &token, &receiver.url()).await;
    ingest(
        &server,
        &token,
        event("m", "RECORD_OVER", "live", "secret-stream-name"),
    )
    .await;
    // Recorded, not only arrived: the attempt is counted after its answer comes back.
    log_until(&server, &token, "status=succeeded", |log| log["total"] == 1).await;
    let text = common::metrics_text(&server.http, &server.base).await;
    for name in [
        "herald_events_accepted_total",
        "herald_delivery_attempts_total",
        "herald_delivery_attempt_duration_seconds_bucket",
        "herald_oldest_due_delivery_age_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(
        !text.contains("secret-stream-name") && !text.contains("127.0.0.1"),
        "unbounded label in:\n{text}"
    );
}

#[tokio::test]
async fn redirects_are_not_followed_and_answers_are_kept_short() {
    let (server, token) = server("0s").await;
    let target = Receiver::ok().await;
    let location = target.url();
    let redirecting = {
        let app = axum::Router::new().route(
            "/cb",
            axum::routing::post(move || {
                let location = location.clone();
                async move {
                    (
                        StatusCode::FOUND,
                        [("location", location)],
                        "x".repeat(10_000),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cb", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    };
    config(
        &server,
        &token,
        json!({"publish_domain": "push.example.com", "app": "*", "notify_callback_url": redirecting,
        "notify_event_subscription": ["RECORD_OVER"]}),
    )
    .await;
    ingest(&server, &token, event("moved", "RECORD_OVER", "live", "s")).await;
    let log = log_until(&server, &token, "status=dead", |log| log["total"] == 1).await;
    let attempt = &log["deliveries"][0]["attempts"][0];
    assert_eq!(
        (attempt["status_code"].as_u64(), attempt["error"].as_str()),
        (Some(302), Some("HTTP 302"))
    );
    assert_eq!(
        attempt["response"].as_str().unwrap().len(),
        1024,
        "the answer is kept to its first KiB"
    );
    assert!(target.received().is_empty(), "the redirect was followed");
}

/// A node whose delivery worker stopped would accept events and never deliver them: it
/// says so on /readyz (503) and its supervision ends in an error (the process exits
/// non-zero, for a supervisor to restart it).
#[tokio::test]
async fn a_stopped_worker_makes_the_node_unready_and_the_process_exit() {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = herald::settings::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.path().to_owned(),
        ..herald::settings::Settings::default()
    };
    let running = herald::app::start(&settings).await.unwrap();
    let readyz = format!("http://{}/readyz", running.local_addr);
    let http = reqwest::Client::new();
    let ready = || async { http.get(&readyz).send().await.unwrap().status().as_u16() };
    assert_eq!(ready().await, 200);
    running.delivery.abort();
    let deadline = std::time::Instant::now() + WAIT;
    while ready().await != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never said 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ended = tokio::time::timeout(
        WAIT,
        herald::app::supervise(running, std::future::pending(), Duration::from_secs(1)),
    )
    .await
    .expect("supervision went on without a worker");
    let error = ended.unwrap_err().to_string();
    assert!(error.contains("delivery worker stopped"), "{error}");
}

/// Supervision that gives up after two quick restarts: what takes seconds in production
/// takes milliseconds here.
fn impatient() -> herald_store::supervision::Supervisor {
    herald_store::supervision::Supervisor::with_policy(herald_store::supervision::RestartPolicy {
        most_restarts: 2,
        first_backoff: Duration::from_millis(10),
        healthy_after: Duration::from_secs(60),
    })
}

/// Settings of a server on the embedded store in `dir`, with a static token for `p1`.
fn embedded(dir: &std::path::Path) -> herald::settings::Settings {
    herald::settings::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        tokens: vec![herald::settings::StaticToken {
            project_id: "p1".into(),
            token: secrecy::SecretString::from("supervised-token-7c2e9a4f1b8d3065"),
        }],
        ..herald::settings::Settings::default()
    }
}

/// `/readyz`'s status code and its `status` text.
async fn readiness(http: &reqwest::Client, addr: std::net::SocketAddr) -> (u16, String) {
    let answer = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    let code = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap();
    (code, body["status"].as_str().unwrap_or_default().to_owned())
}

/// Each background task the server depends on (the embedded store's ingest committer and
/// WAL checkpointer, retention, the recording tracker) panics on every run: once its restarts are spent,
/// /readyz answers 503 naming it, and supervision ends in an error naming it (the process
/// exits non-zero, for systemd to restart it). Before, each was a bare `tokio::spawn`
/// that ended silently while /readyz said 200.
#[tokio::test]
async fn a_background_task_that_keeps_panicking_makes_the_node_unready_and_the_process_exit() {
    let http = reqwest::Client::new();
    for task in [
        "ingest committer",
        "wal checkpointer",
        "retention",
        "recording tracker",
    ] {
        let data_dir = tempfile::tempdir().unwrap();
        let tasks = impatient();
        tasks.inject_panics(task, u32::MAX);
        let running = herald::app::start_with(&embedded(data_dir.path()), tasks)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            let (code, status) = readiness(&http, running.local_addr).await;
            if code == 503 {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz never said 503 for {task}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(status, format!("background task failed: {task}"));
        let ended = tokio::time::timeout(
            WAIT,
            herald::app::supervise(running, std::future::pending(), Duration::from_secs(1)),
        )
        .await
        .expect("supervision went on without the task");
        let error = ended.unwrap_err().to_string();
        assert!(error.contains(task), "{error}");
    }
}

/// A task that panics once is started again: the ingest committer's next run takes what
/// waits in its queue (the queue outlives a run), ingest is accepted, and the node stays
/// ready.
#[tokio::test]
async fn an_ingest_committer_that_panics_once_is_restarted_and_ingest_goes_on() {
    let data_dir = tempfile::tempdir().unwrap();
    let tasks = impatient();
    tasks.inject_panics("ingest committer", 1);
    let running = herald::app::start_with(&embedded(data_dir.path()), tasks)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("http://{}/v1/p1/record/events", running.local_addr))
        .header("X-Auth-Token", "supervised-token-7c2e9a4f1b8d3065")
        .json(&event("after-a-panic", "RECORD_OVER", "live", "s"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202);
    assert_eq!(readiness(&http, running.local_addr).await.0, 200);
    assert!(running.tasks.failed_tasks().is_empty());
    running.shutdown.cancel();
}
