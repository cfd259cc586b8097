//! The real `herald` binary as an operator runs it: start-up line, signals, logs.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Creds, TestServer};

#[tokio::test]
async fn serve_announces_its_address_stops_on_sigterm_and_logs_no_secret() {
    let data_dir = tempfile::tempdir().unwrap();
    let herald = env!("CARGO_BIN_EXE_herald");
    let mut child = Command::new(herald)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();

    let out = Command::new(herald)
        .args([
            "credentials",
            "create",
            "--project",
            "p1",
            "--json",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let creds = Creds {
        project: "p1".into(),
        ak: v["access_key"].as_str().unwrap().into(),
        sk: v["secret_key"].as_str().unwrap().into(),
    };
    let key = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";
    let client = TestServer::client_for(&base);
    let body = format!(r#"{{"publish_domain": "d.com", "app": "a", "key": "{key}"}}"#);
    let created = client
        .signed(
            &creds,
            reqwest::Method::POST,
            "/v1/p1/record/callbacks",
            Some(&body),
        )
        .await;
    assert_eq!(created.status(), 201);

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "herald did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("shutting down"), "{logs}");
    for secret in [creds.sk.as_str(), key] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
    let master = std::fs::read_to_string(data_dir.path().join("master.key")).unwrap();
    assert!(!logs.contains(master.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_callback_in_flight_finish_and_keeps_the_rest_queued() {
    use axum::http::StatusCode;
    use common::receiver::{Received, Receiver};
    use tokio::io::AsyncBufReadExt;

    let receiver = Receiver::scripted(std::sync::Arc::new(|_r: &Received, _n: usize| {
        (StatusCode::OK, Duration::from_millis(1500))
    }))
    .await;
    let data_dir = tempfile::tempdir().unwrap();
    let herald = env!("CARGO_BIN_EXE_herald");
    let mut child = tokio::process::Command::new(herald)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-private-targets",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let base = lines
        .next_line()
        .await
        .unwrap()
        .unwrap()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let out = tokio::process::Command::new(herald)
        .args([
            "tokens",
            "create",
            "--project",
            "p1",
            "--json",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .output()
        .await
        .unwrap();
    let token = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .header("x-auth-token", &token)
            .json(&body)
            .send()
    };
    let config = serde_json::json!({"publish_domain": "d.example.com", "app": "*", "notify_callback_url": receiver.url(),
        "notify_event_subscription": ["RECORD_OVER"]});
    assert_eq!(
        post("/v1/p1/record/callbacks", config)
            .await
            .unwrap()
            .status(),
        201
    );
    let event = |id: &str| serde_json::json!({"event_id": id, "event_type": "RECORD_OVER", "publish_domain": "d.example.com", "app": "a", "stream": "s"});
    let batch = serde_json::json!({"events": [event("in-flight"), event("queued")]});
    assert_eq!(
        post("/v1/p1/record/events", batch).await.unwrap().status(),
        202
    );
    receiver.wait_for(1, Duration::from_secs(10)).await;

    let pid = child.id().unwrap().to_string();
    assert!(
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");

    // The callback that was in flight finished and was recorded; the next stayed queued.
    let db = data_dir.path().join(herald_store::sqlite::DATABASE_FILE);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let states: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.event_id, d.state FROM deliveries d JOIN events e ON e.seq = d.event_seq ORDER BY d.id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        states,
        [
            ("in-flight".to_owned(), "succeeded".to_owned()),
            ("queued".to_owned(), "pending".to_owned())
        ]
    );
    assert_eq!(receiver.received().len(), 1);
}
