//! Day two (issue 27): recovering after a receiver's outage with a bulk retry, and
//! replaying history to a new endpoint. Runs on the embedded store, and on PostgreSQL with
//! `HERALD_TEST_BACKEND=postgres`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::TestServer;
use common::receiver::{Received, Receiver};
use serde_json::{Value, json};

async fn config_for(server: &TestServer, token: &str, project: &str, url: &str) -> String {
    let (status, created) = server
        .post_with_token(
            token,
            &format!("/v1/{project}/record/callbacks"),
            &json!({"publish_domain": "push.example.com", "app": "*", "notify_callback_url": url,
                "notify_event_subscription": ["RECORD_OVER"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// Ingests `events` in requests of 100.
async fn ingest(server: &TestServer, token: &str, project: &str, events: &[Value]) {
    for chunk in events.chunks(100) {
        let (status, answer) = server
            .post_with_token(
                token,
                &format!("/v1/{project}/record/events"),
                &json!({ "events": chunk }),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
    }
}

fn over(id: &str, stream: &str) -> Value {
    json!({"event_id": id, "event_type": "RECORD_OVER", "publish_domain": "push.example.com",
        "app": "live", "stream": stream})
}

/// Polls `project`'s delivery log until `n` deliveries are `status`.
async fn wait_for_status(server: &TestServer, token: &str, project: &str, status: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, log) = server
            .get_with_token(
                token,
                &format!("/v1/{project}/record/deliveries?status={status}&limit=1"),
            )
            .await;
        if log["total"] == n {
            return;
        }
        assert!(Instant::now() < deadline, "not {n} {status}: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Event ids per stream, in the order they arrived.
fn arrival_order(received: &[Received]) -> HashMap<String, Vec<String>> {
    let mut by_stream: HashMap<String, Vec<String>> = HashMap::new();
    for r in received {
        let stream = r.json()["stream"].as_str().unwrap().to_owned();
        by_stream
            .entry(stream)
            .or_default()
            .push(r.header("herald-event-id"));
    }
    by_stream
}

/// 500 deliveries die while their receiver is down; once it is back, one bulk retry
/// queues them all, each is delivered once, each stream in its order; a repeat (from the
/// API, then from the CLI) queues nothing; another project cannot touch them; a bad
/// filter is a 400 that names the field.
#[tokio::test]
async fn a_bulk_retry_after_an_outage_delivers_everything_once_in_stream_order() {
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.retry_schedule = common::schedule("0s");
    })
    .await;
    let token = server.token("p1").await;
    let down = Arc::new(AtomicBool::new(true));
    let is_down = down.clone();
    let receiver = Receiver::scripted(Arc::new(move |_: &Received, _| {
        let status = if is_down.load(Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (status, Duration::ZERO)
    }))
    .await;
    config_for(&server, &token, "p1", &receiver.url()).await;
    let events: Vec<Value> = (0..500)
        .map(|i| over(&format!("e{i:03}"), &format!("s{}", i % 25)))
        .collect();
    ingest(&server, &token, "p1", &events).await;
    wait_for_status(&server, &token, "p1", "dead", 500).await;
    let failed_sends = receiver.received().len();
    down.store(false, Ordering::SeqCst);

    let path = "/v1/p1/record/deliveries/retry";
    let (status, answer) = server
        .post_with_token(&token, path, &json!({"status": "buried"}))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error_msg"].as_str().unwrap().contains("status"),
        "{answer}"
    );
    let (status, answer) = server
        .post_with_token(
            &token,
            path,
            &json!({"status": "dead", "since": "yesterday"}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error_msg"].as_str().unwrap().contains("since"),
        "{answer}"
    );
    let stranger = server.token("p2").await;
    let (status, _) = server
        .post_with_token(&stranger, path, &json!({"status": "dead"}))
        .await;
    assert_eq!(status, 403, "another project's token reaches nothing of p1");
    let (status, nothing) = server
        .post_with_token(
            &stranger,
            "/v1/p2/record/deliveries/retry",
            &json!({"status": "dead"}),
        )
        .await;
    assert_eq!(
        (status, &nothing),
        (202, &json!({"queued": 0, "more": false}))
    );

    let (status, answer) = server
        .post_with_token(&token, path, &json!({"status": "dead"}))
        .await;
    assert_eq!(
        (status, &answer),
        (202, &json!({"queued": 500, "more": false}))
    );
    let (_, again) = server
        .post_with_token(&token, path, &json!({"status": "dead"}))
        .await;
    assert_eq!(again["queued"], 0, "{again}");
    wait_for_status(&server, &token, "p1", "succeeded", 500).await;
    let out = server
        .herald(&[
            "deliveries",
            "retry",
            "--project",
            "p1",
            "--status",
            "dead",
            "--since",
            "2h",
            "--json",
        ])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli, json!({"queued": 0}));

    let delivered = &receiver.received()[failed_sends..];
    let ids: Vec<String> = delivered
        .iter()
        .map(|r| r.header("herald-event-id"))
        .collect();
    assert_eq!(ids.len(), 500, "each delivered once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 500);
    for (stream, order) in arrival_order(delivered) {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{stream} out of order");
    }
}

const KEY: &str = "Replay0123456789abcdefghijKLMNOP";

/// A repaired endpoint gets the history it missed: a config added later replays a range,
/// and receives exactly the events of the range it subscribes to, with their original
/// ids, in order per stream, signed afresh with its own key (verified with the receiver
/// kit). Another project's ids are 404; a missing bound is a 400 naming it.
#[tokio::test]
async fn a_replay_sends_exactly_the_matching_history_in_order_signed_afresh() {
    let server = TestServer::start_with(|s| s.allow_private_targets = true).await;
    let token = server.token("p1").await;
    let first = Receiver::ok().await;
    config_for(&server, &token, "p1", &first.url()).await;
    let start = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let mut in_range = Vec::new();
    let mut events = Vec::new();
    for i in 0..12 {
        let id = format!("in-{i:02}");
        let event_type = if i % 3 == 2 {
            "RECORD_FILE_COMPLETE"
        } else {
            "RECORD_OVER"
        };
        if event_type == "RECORD_OVER" {
            in_range.push(id.clone());
        }
        events.push(json!({"event_id": id, "event_type": event_type,
            "publish_domain": "push.example.com", "app": "live", "stream": format!("s{}", i % 2)}));
    }
    ingest(&server, &token, "p1", &events).await;
    let until = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        + time::Duration::seconds(1);
    while time::OffsetDateTime::now_utc() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ingest(
        &server,
        &token,
        "p1",
        &[over("late-0", "s0"), over("late-1", "s1")],
    )
    .await;
    first
        .wait_for(in_range.len() + 2, Duration::from_secs(20))
        .await;

    let repaired = Receiver::ok().await;
    let (status, created) = server
        .post_with_token(
            &token,
            "/v1/p1/record/callbacks",
            &json!({"publish_domain": "push.example.com", "app": "live",
                "notify_callback_url": repaired.url(), "sign_type": "HMACSHA256", "key": KEY,
                "notify_event_subscription": ["RECORD_OVER"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let fmt = |t: time::OffsetDateTime| herald_core::timefmt::utc_seconds(t);
    let range = json!({"since": fmt(start), "until": fmt(until)});
    let path = format!("/v1/p1/record/callbacks/{id}/replay");

    let (status, answer) = server
        .post_with_token(&token, &path, &json!({"since": fmt(start)}))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error_msg"].as_str().unwrap().contains("until"),
        "{answer}"
    );
    let stranger = server.token("p2").await;
    let (status, _) = server
        .post_with_token(
            &stranger,
            &format!("/v1/p2/record/callbacks/{id}/replay"),
            &range,
        )
        .await;
    assert_eq!(status, 404, "another project's config is not found");
    let (status, _) = server
        .post_with_token(
            &token,
            "/v2/apps/0123456789abcdef01234567/record-callback/replay",
            &range,
        )
        .await;
    assert_eq!(status, 404);

    let (status, answer) = server.post_with_token(&token, &path, &range).await;
    assert_eq!((status, &answer), (202, &json!({"queued": in_range.len()})));
    let received = repaired
        .wait_for(in_range.len(), Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = if repaired.received().len() > received.len() {
        repaired.received()
    } else {
        received
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for r in &received {
        herald_verify::verify_live(&r.body, KEY, herald_verify::SignType::HmacSha256, now)
            .unwrap_or_else(|e| panic!("a replayed callback's signature: {e}"));
    }
    let mut got: Vec<String> = received
        .iter()
        .map(|r| r.header("herald-event-id"))
        .collect();
    for (stream, order) in arrival_order(&received) {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{stream} out of order");
    }
    got.sort();
    assert_eq!(
        got, in_range,
        "exactly the range's events the config subscribes to"
    );
}
