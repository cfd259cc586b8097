//! Several `herald serve` processes on one PostgreSQL (SPEC §6): they share the work with
//! no coordination beyond the database, every event is delivered, none twice while every
//! node lives, each stream in order; and a node killed with `kill -9` loses nothing, as
//! the survivor takes its leases over when they expire. Skipped without
//! `HERALD_TEST_DATABASE_URL` (`.ci/run` sets it).

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::receiver::{Received, Receiver};
use common::{run_cli_with, spawn_serve};
use herald_core::secrets::MasterKey;
use herald_store::testing::TestSchema;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const STREAMS: usize = 100;

/// Two nodes' settings: one database, one master key, quick retries, and a short delivery
/// timeout so that a dead node's leases (2 × the timeout + 10 s) expire within the test.
struct Cluster {
    schema: TestSchema,
    master_key: String,
}

impl Cluster {
    async fn new() -> Option<Self> {
        let schema = TestSchema::create().await?;
        let (_, hex) = MasterKey::generate();
        Some(Self {
            schema,
            master_key: hex.expose_secret().to_owned(),
        })
    }

    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("HERALD_DATABASE_URL", self.schema.url.as_str()),
            ("HERALD_MASTER_KEY", self.master_key.as_str()),
            ("HERALD_DATABASE_POOL_SIZE", "6"),
            (
                "HERALD_RETRY_SCHEDULE",
                "0s,200ms,200ms,500ms,500ms,1s,1s,1s,1s,1s",
            ),
            ("HERALD_DELIVERY_TIMEOUT", "2s"),
            ("HERALD_POLL_INTERVAL", "500ms"),
        ]
    }

    /// A node with a data dir of its own (nothing in it is shared).
    async fn node(&self) -> (tokio::process::Child, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (child, base) = spawn_serve(
            dir.path(),
            &["--allow-private-targets"],
            &self.env(),
            Stdio::inherit(),
        )
        .await;
        (child, base, dir)
    }

    /// A token made with the CLI against the database, as an operator would.
    async fn token(&self) -> String {
        let dir = tempfile::tempdir().unwrap();
        let out = run_cli_with(
            dir.path(),
            &["tokens", "create", "--project", "p1", "--json"],
            &self.env(),
        )
        .await;
        let created: Value = serde_json::from_slice(&out.stdout).unwrap();
        created["token"].as_str().unwrap().to_owned()
    }
}

async fn create_config(http: &reqwest::Client, base: &str, token: &str, url: &str) {
    let created = http
        .post(format!("{base}/v1/p1/record/callbacks"))
        .header("x-auth-token", token)
        .json(
            &json!({"publish_domain": "push.example.com", "app": "*", "notify_callback_url": url,
                      "notify_event_subscription": ["RECORD_FILE_COMPLETE"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
}

/// Event `n` of a node: its id sorts in the node's sending order.
fn event(node: &str, n: usize) -> Value {
    json!({"event_id": format!("{node}-{n:06}"), "event_type": "RECORD_FILE_COMPLETE",
           "publish_domain": "push.example.com", "app": "live", "stream": format!("s{}", n % STREAMS)})
}

/// Sends `node`'s events in batches of 50, one batch at a time, from `first` until `stop`
/// or `count`; returns the ids that got a 202.
async fn ingest(
    http: reqwest::Client,
    base: String,
    token: String,
    node: &'static str,
    count: usize,
    stop: Arc<AtomicBool>,
) -> HashSet<String> {
    let mut accepted = HashSet::new();
    let mut n = 0;
    while n < count && !stop.load(Ordering::SeqCst) {
        let events: Vec<Value> = (n..(n + 50).min(count)).map(|i| event(node, i)).collect();
        n += events.len();
        let ids = events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned());
        let sent = http
            .post(format!("{base}/v1/p1/record/events"))
            .header("x-auth-token", &token)
            .json(&json!({ "events": events }))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 202 => accepted.extend(ids),
            Ok(r) => panic!("ingest through {node} answered {}", r.status()),
            // The node died mid-request: these were never acknowledged.
            Err(_) => break,
        }
    }
    accepted
}

/// Per stream, each node's events arrived in the order that node accepted them. (A
/// stream's next callback goes out only once the one before it is answered, so arrival
/// order at the receiver is the sending order.)
fn assert_stream_order(arrivals: &[Received]) {
    let mut last: HashMap<(String, String), String> = HashMap::new();
    for r in arrivals {
        let id = r.header("herald-event-id");
        let stream = r.json()["stream"].as_str().unwrap().to_owned();
        let node = id.split('-').next().unwrap().to_owned();
        if let Some(previous) = last.insert((stream.clone(), node), id.clone()) {
            // A redelivery repeats an id; anything earlier than the last is out of order.
            assert!(previous <= id, "{stream}: {id} arrived after {previous}");
        }
    }
}

/// How many callbacks a node has finished, from its `/metrics`.
async fn completed_by(http: &reqwest::Client, base: &str) -> f64 {
    common::metrics_text(http, base)
        .await
        .lines()
        .filter(|l| l.starts_with("herald_deliveries_completed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_every_event_once_and_in_stream_order() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let receiver = Receiver::ok().await;
    let (_a, base_a, _dir_a) = cluster.node().await;
    let (_b, base_b, _dir_b) = cluster.node().await;
    let token = cluster.token().await;
    let http = reqwest::Client::new();
    // Made through one node, used by both: nodes keep no state of their own.
    create_config(&http, &base_a, &token, &receiver.url()).await;

    let never = Arc::new(AtomicBool::new(false));
    let through_a = tokio::spawn(ingest(
        http.clone(),
        base_a.clone(),
        token.clone(),
        "a",
        2500,
        never.clone(),
    ));
    let through_b = tokio::spawn(ingest(
        http.clone(),
        base_b.clone(),
        token.clone(),
        "b",
        2500,
        never,
    ));
    let mut expected = through_a.await.unwrap();
    expected.extend(through_b.await.unwrap());
    assert_eq!(expected.len(), 5000);

    let arrivals = receiver
        .wait_for_ids(&expected, Duration::from_secs(120))
        .await;
    let unique: HashSet<String> = arrivals
        .iter()
        .map(|r| r.header("herald-event-id"))
        .collect();
    let duplicates = arrivals.len() - unique.len();
    eprintln!(
        "5000 events through two nodes: {} callbacks, {duplicates} duplicates",
        arrivals.len()
    );
    assert_eq!(duplicates, 0, "no node died, so nothing may arrive twice");
    assert_eq!(unique, expected);
    assert_stream_order(&arrivals);

    // Both nodes did part of the sending.
    let (by_a, by_b) = (
        completed_by(&http, &base_a).await,
        completed_by(&http, &base_b).await,
    );
    eprintln!("callbacks sent: node a {by_a}, node b {by_b}");
    assert_eq!(by_a + by_b, 5000.0);
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "one node did all the work: a {by_a}, b {by_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_loses_nothing() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    // A slowish receiver keeps many callbacks on the wire when the kill comes.
    let receiver = Receiver::scripted(Arc::new(|_r: &Received, _n: usize| {
        (StatusCode::OK, Duration::from_millis(20))
    }))
    .await;
    let (mut a, base_a, _dir_a) = cluster.node().await;
    let (_b, base_b, _dir_b) = cluster.node().await;
    let token = cluster.token().await;
    let http = reqwest::Client::new();
    create_config(&http, &base_b, &token, &receiver.url()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let through_a = tokio::spawn(ingest(
        http.clone(),
        base_a,
        token.clone(),
        "a",
        4000,
        stop.clone(),
    ));
    let through_b = tokio::spawn(ingest(
        http.clone(),
        base_b.clone(),
        token.clone(),
        "b",
        4000,
        stop.clone(),
    ));
    receiver.wait_for(300, Duration::from_secs(60)).await;
    a.kill().await.unwrap();
    let killed_at = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let mut expected = through_a.await.unwrap();
    let accepted_by_a = expected.len();
    expected.extend(through_b.await.unwrap());
    // The survivor keeps taking events after the kill.
    let never = Arc::new(AtomicBool::new(false));
    let after: HashSet<String> = ingest(http.clone(), base_b, token, "c", 500, never).await;
    expected.extend(after);

    let arrivals = receiver
        .wait_for_ids(&expected, Duration::from_secs(90))
        .await;
    let mut first_arrival: HashMap<String, Instant> = HashMap::new();
    let mut duplicates = 0;
    for r in &arrivals {
        let id = r.header("herald-event-id");
        match first_arrival.get(&id) {
            None => {
                first_arrival.insert(id, r.at);
            }
            Some(first) => {
                duplicates += 1;
                assert!(
                    *first <= killed_at,
                    "{id} arrived twice though its first attempt came after the kill"
                );
            }
        }
    }
    eprintln!(
        "accepted {} ({accepted_by_a} through the killed node), all delivered {:?} after the kill; \
         {duplicates} duplicates (on the wire at the kill)",
        expected.len(),
        killed_at.elapsed()
    );
    assert!(accepted_by_a > 0);
    assert_stream_order(&arrivals);
}

/// A recording step was leased for 15 minutes: when the node reading a file was killed,
/// the file's callback waited that long for another node. Leases are now short and renewed
/// while a file is read, so the other node reports the file within a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_reader_was_killed_is_reported_by_another_node_within_a_minute() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    common::media::require_tools();
    let receiver = Receiver::ok().await;
    // Node A's ffprobe says it runs, then reads forever; it marks when it starts reading.
    let tools = tempfile::tempdir().unwrap();
    let mark = tools.path().join("reading");
    let stuck = tools.path().join("ffprobe");
    std::fs::write(
        &stuck,
        format!(
            "#!/bin/sh\ncase \"$*\" in *-version*) exit 0;; esac\ntouch '{}'\nexec sleep 120\n",
            mark.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stuck, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut env_a = cluster.env();
    env_a.push(("HERALD_FFPROBE", stuck.to_str().unwrap()));
    let dir_a = tempfile::tempdir().unwrap();
    let (mut a, base_a) = spawn_serve(
        dir_a.path(),
        &["--allow-private-targets"],
        &env_a,
        Stdio::inherit(),
    )
    .await;
    let token = cluster.token().await;
    let http = reqwest::Client::new();
    create_config(&http, &base_a, &token, &receiver.url()).await;
    let record_dir = tempfile::tempdir().unwrap();
    let record_dir = record_dir.path().canonicalize().unwrap();
    let source: Value = http
        .post(format!("{base_a}/v1/p1/record/sources"))
        .header("x-auth-token", &token)
        .json(
            &json!({"engine": "nginx-rtmp", "publish_domain": "push.example.com",
                      "record_dir": record_dir.to_str().unwrap(), "max_pause": "1s"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hook = source["hook_url"].as_str().unwrap().to_owned();
    let file = record_dir.join("cam-1.flv");
    common::media::write_recording(&file, common::media::Format::Flv, 2).await;
    let answer = http
        .post(&hook)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "app=live&call=record_done&name=cam&path={}",
            percent_encoding::utf8_percent_encode(
                file.to_str().unwrap(),
                percent_encoding::NON_ALPHANUMERIC
            )
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let reading = Instant::now();
    while !mark.exists() {
        assert!(
            reading.elapsed() < Duration::from_secs(30),
            "node A never started reading the file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // kill -9 mid-probe; B, with a working ffprobe, takes the step over.
    a.kill().await.unwrap();
    let killed = Instant::now();
    let dir_b = tempfile::tempdir().unwrap();
    let (_b, _base_b) = spawn_serve(
        dir_b.path(),
        &["--allow-private-targets"],
        &cluster.env(),
        Stdio::inherit(),
    )
    .await;
    loop {
        let reported = receiver
            .received()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("RECORD_FILE_COMPLETE"));
        if reported {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the file was not reported within a minute of the kill"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
