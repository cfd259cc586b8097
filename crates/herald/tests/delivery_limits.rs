//! The delivery worker's limits under faults: leases that cover the longest hold, a store
//! that cannot write, and one project's hanging receivers against another's. Runs on the
//! embedded store, and on PostgreSQL with `HERALD_TEST_BACKEND=postgres`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::TestServer;
use common::receiver::{Received, Receiver};
use serde_json::{Value, json};

async fn config_for(server: &TestServer, token: &str, project: &str, domain: &str, url: &str) {
    let (status, created) = server
        .post_with_token(
            token,
            &format!("/v1/{project}/record/callbacks"),
            &json!({"publish_domain": domain, "app": "*", "notify_callback_url": url,
                "notify_event_subscription": ["RECORD_OVER"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
}

async fn ingest_for(server: &TestServer, token: &str, project: &str, events: Vec<Value>) {
    let (status, answer) = server
        .post_with_token(
            token,
            &format!("/v1/{project}/record/events"),
            &json!({ "events": events }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
}

fn over(id: &str, domain: &str, stream: &str) -> Value {
    json!({"event_id": id, "event_type": "RECORD_OVER", "publish_domain": domain,
        "app": "live", "stream": stream})
}

/// Polls `project`'s delivery log until every delivery has succeeded; returns the log.
async fn all_succeeded(
    server: &TestServer,
    token: &str,
    project: &str,
    n: usize,
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (_, log) = server
            .get_with_token(
                token,
                &format!("/v1/{project}/record/deliveries?status=succeeded&limit=100"),
            )
            .await;
        if log["total"] == n {
            return log;
        }
        assert!(Instant::now() < deadline, "not all succeeded: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 24's first scenario: receivers that take long but answer within the timeout. With
/// a 20 s timeout and two sending permits per endpoint, a claim holds four deliveries: two
/// are sent at once (18 s each), two wait for a permit and are sent after them, so the last
/// outcome comes 36 s after the claim. A lease of the timeout plus 10 s (30 s) ran out
/// under them, and the rescuer (every 5 s) took them back while they were being sent: a
/// second send, a false attempt, the real outcome discarded. The lease now covers the
/// longest hold: each callback is sent once, and succeeds at its first attempt.
#[tokio::test]
async fn slow_receivers_within_the_timeout_are_sent_each_callback_once() {
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.delivery_timeout = Duration::from_secs(20);
        s.endpoint_concurrency = 2;
    })
    .await;
    let token = server.token("p1").await;
    let receiver = Receiver::scripted(Arc::new(|_: &Received, _| {
        (StatusCode::OK, Duration::from_secs(18))
    }))
    .await;
    config_for(&server, &token, "p1", "push.example.com", &receiver.url()).await;
    let events = (0..4)
        .map(|i| over(&format!("slow-{i}"), "push.example.com", &format!("s{i}")))
        .collect();
    ingest_for(&server, &token, "p1", events).await;
    let log = all_succeeded(&server, &token, "p1", 4, Duration::from_secs(90)).await;
    for delivery in log["deliveries"].as_array().unwrap() {
        let attempts = delivery["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{delivery}");
        assert_eq!(attempts[0]["status_code"], 200, "{delivery}");
    }
    // Give a rescuer that wrongly took a lease back its tick to send again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("herald-event-id"))
        .collect();
    assert_eq!(ids.len(), 4, "callbacks sent more than once: {ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 4, "{ids:?}");
}

/// A store that cannot write stops the sending at the in-flight bound: a delivery's slot
/// is held until its outcome is recorded, so outcomes cannot pile up in memory while the
/// worker goes on claiming (claims only read on the embedded store). When writes resume,
/// everything is delivered, each callback once, nothing lost.
#[tokio::test]
async fn a_store_that_cannot_write_stops_the_sending_at_the_in_flight_bound() {
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.max_in_flight = 4;
        s.project_in_flight = Some(4);
        s.endpoint_concurrency = 8;
    })
    .await;
    let token = server.token("p1").await;
    // The first four answers take long enough for the test to take the write lock first.
    let receiver = Receiver::scripted(Arc::new(|_: &Received, n| {
        let delay = if n < 4 { 1500 } else { 0 };
        (StatusCode::OK, Duration::from_millis(delay))
    }))
    .await;
    config_for(&server, &token, "p1", "push.example.com", &receiver.url()).await;
    let events: Vec<Value> = (0..20)
        .map(|i| over(&format!("stuck-{i}"), "push.example.com", &format!("s{i}")))
        .collect();
    ingest_for(&server, &token, "p1", events).await;
    receiver.wait_for(4, Duration::from_secs(10)).await;
    let held = server.hold_writes_behind_herald().await;
    // The four answers come, their outcomes cannot be written: nothing more may be sent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        receiver.received().len(),
        4,
        "sent while no outcome could be recorded"
    );
    drop(held);
    all_succeeded(&server, &token, "p1", 20, Duration::from_secs(60)).await;
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("herald-event-id"))
        .collect();
    assert_eq!(ids.len(), 20, "{ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 20, "{ids:?}");
}

/// Ports that accept a connection and never answer.
fn black_holes(ip: std::net::IpAddr, n: usize) -> (Vec<String>, tokio::task::JoinSet<()>) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut urls = Vec::new();
    for _ in 0..n {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        urls.push(format!("http://{}/cb", listener.local_addr().unwrap()));
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tasks.spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
    }
    (urls, tasks)
}

/// Issue 24's starvation scenario: one project with four configs pointing at ports that
/// accept and never answer, forty events; the worker's room is eight, two per endpoint.
/// The cap was per port and the room first come, first served, so the hostile project
/// took all of it and another project's callback waited for its timeouts (40 s). Now the
/// cap is per project and host, and one project holds at most its share: the healthy
/// project's callback arrives at once, although its receiver is on the same host as the
/// hostile project's ports.
#[tokio::test]
async fn one_projects_hanging_receivers_do_not_starve_another_project() {
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.max_in_flight = 8;
        s.endpoint_concurrency = 2;
        s.delivery_timeout = Duration::from_secs(5);
        s.retry_schedule = common::schedule("0s,1h");
    })
    .await;
    let hostile_token = server.token("hostile").await;
    let healthy_token = server.token("healthy").await;
    let healthy = Receiver::ok().await;
    let (holes, _holes) = black_holes(healthy.addr.ip(), 4);
    for (i, url) in holes.iter().enumerate() {
        let domain = format!("hole{i}.example.com");
        config_for(&server, &hostile_token, "hostile", &domain, url).await;
    }
    config_for(
        &server,
        &healthy_token,
        "healthy",
        "push.example.com",
        &healthy.url(),
    )
    .await;
    let events = (0..40)
        .map(|i| {
            over(
                &format!("h{i}"),
                &format!("hole{}.example.com", i % 4),
                &format!("s{i}"),
            )
        })
        .collect();
    ingest_for(&server, &hostile_token, "hostile", events).await;
    // Let the worker take what it will of the hostile project's deliveries.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    ingest_for(
        &server,
        &healthy_token,
        "healthy",
        vec![over("fine", "push.example.com", "s")],
    )
    .await;
    healthy.wait_for(1, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the healthy callback took {took:?}"
    );
}

/// The value of `herald_endpoint_concurrency{host}` in a server's metrics, if shown.
async fn concurrency_shown(server: &TestServer, host: &str) -> Option<f64> {
    let text = common::metrics_text(&server.http, &server.base).await;
    let series = format!("herald_endpoint_concurrency{{host=\"{host}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().unwrap())
}

/// Issue 27: a receiver that answers 429 with `Retry-After: 2` is tried again no sooner
/// than 2 s later (the schedule's own delay is 1 s), the answer counts as one attempt, and
/// the endpoint's concurrency is halved, then regained step by step as callbacks succeed.
#[tokio::test]
async fn a_receiver_saying_slow_down_is_waited_for_and_its_concurrency_cut_and_restored() {
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.endpoint_concurrency = 8;
        s.retry_schedule = common::schedule("0s,1s,30s");
    })
    .await;
    let token = server.token("p1").await;
    let receiver = Receiver::scripted_with_headers(Arc::new(|_: &Received, n| {
        if n < 8 {
            // The first round: all sent at once, all told to come back in 2 s.
            (
                StatusCode::TOO_MANY_REQUESTS,
                Duration::from_millis(200),
                vec![("retry-after", "2".to_owned())],
            )
        } else {
            (StatusCode::OK, Duration::from_millis(100), Vec::new())
        }
    }))
    .await;
    let host = receiver.addr.ip().to_string();
    config_for(&server, &token, "p1", "push.example.com", &receiver.url()).await;
    let events: Vec<Value> = (0..60)
        .map(|i| over(&format!("busy-{i}"), "push.example.com", &format!("s{i}")))
        .collect();
    ingest_for(&server, &token, "p1", events).await;
    // The cut shows while the endpoint regains its concurrency.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lowest = f64::MAX;
    while Instant::now() < deadline {
        if let Some(now) = concurrency_shown(&server, &host).await {
            lowest = lowest.min(now);
            if lowest < 8.0 && now >= 8.0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lowest, 4.0, "one round of 429s halves the concurrency once");
    all_succeeded(&server, &token, "p1", 60, Duration::from_secs(30)).await;
    assert_eq!(concurrency_shown(&server, &host).await, Some(8.0));
    let received = receiver.received();
    for first in &received[..8] {
        let id = first.header("herald-event-id");
        let again: Vec<&Received> = received
            .iter()
            .filter(|r| r.header("herald-event-id") == id)
            .collect();
        assert_eq!(again.len(), 2, "{id}");
        assert_eq!(again[1].header("herald-delivery-attempt"), "2");
        let waited = again[1].at - first.at;
        assert!(
            waited >= Duration::from_secs(2),
            "{id} retried after {waited:?}"
        );
    }
    // Every callback sent once, and the 8 told to wait once more.
    assert_eq!(received.len(), 68);
    // Endpoint health: 60 of the 68 attempts succeeded, the last error was the 429, the
    // concurrency is back, nothing is on the wire.
    let (status, health) = server
        .get_with_token(&token, "/v1/p1/record/endpoints")
        .await;
    assert_eq!(status, 200, "{health}");
    let endpoint = &health["endpoints"][0];
    assert_eq!(endpoint["host"], host.as_str(), "{health}");
    assert_eq!(endpoint["concurrency"], 8, "{health}");
    assert_eq!(endpoint["in_flight"], 0, "{health}");
    assert_eq!(endpoint["last_error"], "HTTP 429", "{health}");
    assert!(endpoint["last_error_at"].is_string(), "{health}");
    let rate = endpoint["success_rate"].as_f64().unwrap();
    assert!((rate - 60.0 / 68.0).abs() < 1e-9, "{health}");
    let other = server.token("p2").await;
    let (_, theirs) = server
        .get_with_token(&other, "/v1/p2/record/endpoints")
        .await;
    assert_eq!(
        theirs,
        json!({"endpoints": []}),
        "another project sees none of p1's hosts"
    );
}
