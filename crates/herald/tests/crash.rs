//! Accepted means durable: `kill -9` the server mid-flight, restart it on the same data
//! dir, and every event that got a 202 is delivered. A duplicate is allowed only for a
//! callback that was already on the wire when the process died.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::receiver::{Received, Receiver};
use common::{cli_token, spawn_serve};
use serde_json::{Value, json};

/// Quick retries, so re-queued deliveries go out within the test; a one-second retention,
/// so that the cleaner deletes finished history all through the kill and the restart and
/// is proved never to take an accepted event that has not been delivered.
const ENV: &[(&str, &str)] = &[
    (
        "HERALD_RETRY_SCHEDULE",
        "0s,200ms,200ms,500ms,500ms,1s,1s,1s,1s,1s",
    ),
    ("HERALD_POLL_INTERVAL", "200ms"),
    ("HERALD_RETENTION", "1s"),
];
const ARGS: &[&str] = &["--allow-private-targets"];

/// Most events one client sends in one phase, so the test's backlog stays small.
const PHASE_EVENTS: u32 = 600;
/// Clients ingesting at once in each phase: the embedded store commits concurrent ingests
/// together, so the kill finds commits shared by several requests.
const CLIENTS: usize = 4;

/// Sends batches of fresh events over `streams` streams until `stop` (or
/// [`PHASE_EVENTS`]), recording the ids that got a 202. Ids are `{prefix}-{n}`, n counting
/// up: each client's events are accepted in the order of n.
async fn ingest_until(
    http: reqwest::Client,
    base: String,
    token: String,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<HashSet<String>>>,
    prefix: String,
    streams: u32,
) {
    let mut n = 0u32;
    while !stop.load(Ordering::SeqCst) && n < PHASE_EVENTS {
        let events: Vec<Value> = (0..20)
            .map(|i| {
                n += 1;
                json!({"event_id": format!("{prefix}-{n}"), "event_type": "RECORD_FILE_COMPLETE",
                       "publish_domain": "push.example.com", "app": "live", "stream": format!("s{}", (n + i) % streams)})
            })
            .collect();
        let ids: Vec<String> = events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        let sent = http
            .post(format!("{base}/v1/p1/record/events"))
            .header("x-auth-token", &token)
            .json(&json!({ "events": events }))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 202 => accepted.lock().unwrap().extend(ids),
            // The server died mid-request: these were never acknowledged.
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`CLIENTS`] clients running [`ingest_until`] at once; the handle ends when all have.
fn ingest_phase(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    stop: &Arc<AtomicBool>,
    accepted: &Arc<Mutex<HashSet<String>>>,
    phase: &str,
    streams: u32,
) -> tokio::task::JoinHandle<()> {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            tokio::spawn(ingest_until(
                http.clone(),
                base.to_owned(),
                token.to_owned(),
                stop.clone(),
                accepted.clone(),
                format!("{phase}{k}"),
                streams,
            ))
        })
        .collect();
    tokio::spawn(async move {
        for client in clients {
            client.await.unwrap();
        }
    })
}

/// A `herald serve` on a fresh data dir with a config sending push.example.com's
/// `RECORD_FILE_COMPLETE` to `receiver`: its data dir, process, base URL and a token of p1.
async fn first_server(
    receiver: &Receiver,
) -> (tempfile::TempDir, tokio::process::Child, String, String) {
    let data_dir = tempfile::tempdir().unwrap();
    let (first, base) = spawn_serve(data_dir.path(), ARGS, ENV, Stdio::null()).await;
    let token = cli_token(data_dir.path(), "p1").await;
    let created = reqwest::Client::new()
        .post(format!("{base}/v1/p1/record/callbacks"))
        .header("x-auth-token", &token)
        .json(&json!({"publish_domain": "push.example.com", "app": "*", "notify_callback_url": receiver.url(),
                      "notify_event_subscription": ["RECORD_FILE_COMPLETE"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    (data_dir, first, base, token)
}

/// What [`ingest_kill_restart`] leaves: the restarted server (up while this lives), the
/// ids that got a 202 in both phases, how many of them before the kill, and when it came.
struct Restarted {
    _data_dir: tempfile::TempDir,
    _second: tokio::process::Child,
    expected: HashSet<String>,
    accepted_before: usize,
    killed_at: Instant,
}

/// [`first_server`], [`CLIENTS`] clients ingesting over `streams` streams, `kill -9` once
/// `kill_after` callbacks have arrived, then a second `herald serve` on the same data dir
/// and half a second more of ingest (phases `before` and `after`).
async fn ingest_kill_restart(receiver: &Receiver, kill_after: usize, streams: u32) -> Restarted {
    let (data_dir, mut first, base, token) = first_server(receiver).await;
    let http = reqwest::Client::new();
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = ingest_phase(&http, &base, &token, &stop, &accepted, "before", streams);
    // Kill once deliveries are flowing and ingest is in full swing.
    receiver.wait_for(kill_after, Duration::from_secs(30)).await;
    first.kill().await.unwrap();
    let killed_at = Instant::now();
    stop.store(true, Ordering::SeqCst);
    ingest.await.unwrap();
    let accepted_before = accepted.lock().unwrap().len();
    assert!(accepted_before > 0);

    let (second, base) = spawn_serve(data_dir.path(), ARGS, ENV, Stdio::null()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = ingest_phase(&http, &base, &token, &stop, &accepted, "after", streams);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    ingest.await.unwrap();
    let expected = accepted.lock().unwrap().clone();
    Restarted {
        _data_dir: data_dir,
        _second: second,
        expected,
        accepted_before,
        killed_at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_lost_to_kill_9() {
    // A slowish receiver keeps many callbacks on the wire when the kill comes.
    let receiver = Receiver::scripted(Arc::new(|_r: &Received, _n: usize| {
        (StatusCode::OK, Duration::from_millis(20))
    }))
    .await;
    // Bound whole: the restarted server lives as long as `run`.
    let run = ingest_kill_restart(&receiver, 100, 50).await;
    let expected = run.expected.clone();
    let accepted_before = run.accepted_before;
    let killed_at = run.killed_at;
    let delivered = receiver
        .wait_for_ids(&expected, Duration::from_secs(60))
        .await;

    eprintln!("phase: all delivered at {:?}", killed_at.elapsed());
    let mut arrivals: HashMap<String, Vec<Instant>> = HashMap::new();
    for r in &delivered {
        arrivals
            .entry(r.header("herald-event-id"))
            .or_default()
            .push(r.at);
    }
    let duplicates: Vec<_> = arrivals.iter().filter(|(_, at)| at.len() > 1).collect();
    for (id, at) in &duplicates {
        assert!(
            at[0] <= killed_at,
            "{id} was delivered twice though its first attempt came after the kill"
        );
    }
    let unexpected: Vec<_> = arrivals
        .keys()
        .filter(|id| !expected.contains(*id))
        .collect();
    eprintln!(
        "accepted {} ({accepted_before} before the kill), delivered {} callbacks, {} duplicates (in flight at the kill), {} delivered though their 202 was lost",
        expected.len(),
        delivered.len(),
        duplicates.len(),
        unexpected.len(),
    );
    // Every callback is an accepted event, a re-sent one, or one of a request that died
    // with the server: at most one request (20 events) per client was in flight then.
    let resent: usize = duplicates.iter().map(|(_, at)| at.len() - 1).sum();
    assert_eq!(delivered.len(), arrivals.len() + resent);
    assert!(
        unexpected.len() <= CLIENTS * 20,
        "{} events were delivered that no client saw accepted",
        unexpected.len()
    );
    for id in &unexpected {
        assert!(
            id.starts_with("before"),
            "{id}: only a request cut by the kill may lose its 202"
        );
    }
    // Re-sent are only the callbacks in flight at the kill, which the limits bound.
    assert!(
        duplicates.len() <= 512,
        "{} duplicates: more than can be in flight",
        duplicates.len()
    );
}

/// The same with a receiver that says "slow down": every fifth of the first callbacks is
/// answered 429 with `Retry-After: 1`, so when the kill comes (after 100), the endpoint is
/// cut (AIMD) and retries are scheduled by the receiver's word. (Only the first: a receiver
/// that refuses a fifth of everything keeps its endpoint at a concurrency of one or two,
/// which is right, and slow to test.) After the restart every accepted event is still
/// delivered (answered 2xx), and none is delivered twice unless it was on the wire at the
/// kill.
/// Whether the receiver answers the n-th callback 429 (see below).
fn throttled(n: usize) -> bool {
    n < 150 && n % 5 == 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_lost_to_kill_9_while_a_receiver_says_slow_down() {
    let receiver = Receiver::scripted_with_headers(Arc::new(|_r: &Received, n: usize| {
        if throttled(n) {
            (
                StatusCode::TOO_MANY_REQUESTS,
                Duration::from_millis(20),
                vec![("retry-after", "1".to_owned())],
            )
        } else {
            (StatusCode::OK, Duration::from_millis(20), Vec::new())
        }
    }))
    .await;
    // Arrivals answered 2xx: the receiver records them in order, so the n-th is the n-th.
    let delivered = |receiver: &Receiver| -> Vec<Received> {
        receiver
            .received()
            .into_iter()
            .enumerate()
            .filter(|(n, _)| !throttled(*n))
            .map(|(_, r)| r)
            .collect()
    };
    // Bound whole: the restarted server lives as long as `run`.
    let run = ingest_kill_restart(&receiver, 100, 50).await;
    let expected = run.expected.clone();
    let killed_at = run.killed_at;
    let deadline = Instant::now() + Duration::from_secs(90);
    let arrivals = loop {
        let mut arrivals: HashMap<String, Vec<Instant>> = HashMap::new();
        for r in delivered(&receiver) {
            arrivals
                .entry(r.header("herald-event-id"))
                .or_default()
                .push(r.at);
        }
        let missing = expected
            .iter()
            .filter(|id| !arrivals.contains_key(*id))
            .count();
        if missing == 0 {
            break arrivals;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} accepted events never delivered",
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (id, at) in arrivals.iter().filter(|(_, at)| at.len() > 1) {
        assert!(
            at[0] <= killed_at,
            "{id} was delivered twice though its first delivery came after the kill"
        );
    }
}

/// Every event on one stream: the embedded store leases a stream's next deliveries behind
/// its due one and sends each as soon as the one before succeeded, recording outcomes
/// afterwards. `kill -9` mid-way through such a run still loses nothing, re-sends only
/// callbacks already sent before the kill, and each client's events arrive first in the
/// order they were accepted, before and after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_lost_to_kill_9_on_one_busy_stream_and_its_order_holds() {
    let receiver = Receiver::scripted(Arc::new(|_r: &Received, _n: usize| {
        (StatusCode::OK, Duration::from_millis(2))
    }))
    .await;
    // Bound whole: the restarted server lives as long as `run`.
    let run = ingest_kill_restart(&receiver, 300, 1).await;
    let expected = run.expected.clone();
    let killed_at = run.killed_at;
    let delivered = receiver
        .wait_for_ids(&expected, Duration::from_secs(90))
        .await;
    let mut first_seen: Vec<String> = Vec::new();
    let mut arrivals: HashMap<String, Vec<Instant>> = HashMap::new();
    for r in &delivered {
        let id = r.header("herald-event-id");
        let at = arrivals.entry(id.clone()).or_default();
        if at.is_empty() {
            first_seen.push(id);
        }
        at.push(r.at);
    }
    for (id, at) in arrivals.iter().filter(|(_, at)| at.len() > 1) {
        assert!(
            at[0] <= killed_at,
            "{id} was delivered twice though its first delivery came after the kill"
        );
    }
    // Per client (`{phase}{k}`), n counts up in the order of first arrival; and every
    // event accepted before the kill arrived before any accepted after the restart.
    let mut last: HashMap<&str, u32> = HashMap::new();
    let mut after_seen = false;
    for id in &first_seen {
        let (client, n) = id.rsplit_once('-').unwrap();
        let n: u32 = n.parse().unwrap();
        if let Some(before) = last.insert(client, n) {
            assert!(before < n, "{client}-{n} arrived after {client}-{before}");
        }
        after_seen |= client.starts_with("after");
        assert!(
            !(after_seen && client.starts_with("before") && expected.contains(id)),
            "{id}, accepted before the kill, arrived after an event accepted after it"
        );
    }
}
