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
