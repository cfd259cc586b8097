//! The real `herald` binary as an operator runs it: start-up line, signals, logs.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::receiver::{Received, Receiver};
use common::{Creds, TestServer, cli_json, cli_token, spawn_serve, terminate};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn serve_announces_its_address_stops_on_sigterm_and_logs_no_secret() {
    let data_dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn_serve(
        data_dir.path(),
        &[],
        &[("RUST_LOG", "trace")],
        Stdio::piped(),
    )
    .await;
    let v = cli_json(
        data_dir.path(),
        &["credentials", "create", "--project", "p1", "--json"],
    )
    .await;
    let creds = Creds {
        project: "p1".into(),
        ak: v["access_key"].as_str().unwrap().into(),
        sk: v["secret_key"].as_str().unwrap().into(),
    };
    let key = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";
    let body = format!(r#"{{"publish_domain": "d.com", "app": "a", "key": "{key}"}}"#);
    let created = TestServer::client_for(&base)
        .signed(
            &creds,
            reqwest::Method::POST,
            "/v1/p1/record/callbacks",
            Some(&body),
        )
        .await;
    assert_eq!(created.status(), 201);

    let status = terminate(&mut child).await;
    assert!(status.success(), "{status}");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    assert!(logs.contains("shutting down"), "{logs}");
    let master = std::fs::read_to_string(data_dir.path().join("master.key")).unwrap();
    for secret in [creds.sk.as_str(), key, master.trim()] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_callback_in_flight_finish_and_keeps_the_rest_queued() {
    let receiver = Receiver::scripted(Arc::new(|_r: &Received, _n: usize| {
        (StatusCode::OK, Duration::from_millis(1500))
    }))
    .await;
    let data_dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn_serve(
        data_dir.path(),
        &["--allow-private-targets"],
        &[],
        Stdio::null(),
    )
    .await;
    let token = cli_token(data_dir.path(), "p1").await;
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

    let status = terminate(&mut child).await;
    assert!(status.success(), "{status}");

    // The callback that was in flight finished and was recorded; the next stayed queued.
    let db = data_dir.path().join(herald_store::sqlite::DATABASE_FILE);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT e.event_id, d.state FROM deliveries d JOIN events e ON e.seq = d.event_seq ORDER BY d.id")
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

/// `HERALD_DATABASE_URL` may carry a password: when the database cannot be reached, both
/// `herald serve` and the CLI say where they tried to go, and never the password. (A port
/// nobody listens on: no PostgreSQL is needed.)
#[tokio::test]
async fn a_database_url_password_is_never_printed() {
    let data_dir = tempfile::tempdir().unwrap();
    let url = "postgres://herald:Sup3rS3cretPw@127.0.0.1:1/herald";
    for args in [
        &["serve", "--listen", "127.0.0.1:0"][..],
        &["credentials", "list"][..],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("HERALD_DATABASE_URL", url)
            .env("RUST_LOG", "trace")
            .output()
            .await
            .unwrap();
        assert!(
            !out.status.success(),
            "herald {args:?} ran without its database"
        );
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            printed.contains("PostgreSQL at 127.0.0.1:1/herald"),
            "herald {args:?} did not say where it failed: {printed}"
        );
        assert!(
            !printed.contains("Sup3rS3cretPw"),
            "herald {args:?} printed the password: {printed}"
        );
    }
}

/// `herald --version` names the release and the commit it was built from: HEAD's when built
/// in a git checkout (build.rs reruns when HEAD moves, so this holds after a new commit too).
#[test]
fn version_names_the_release_and_its_commit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let commit = printed
        .trim_end()
        .strip_prefix(concat!("herald ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not `herald VERSION (COMMIT)`: {printed:?}"));
    let looks_like_a_hash = (7..=40).contains(&commit.len())
        && commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    assert!(
        looks_like_a_hash || commit == "unknown",
        "not a commit: {printed:?}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    if let (Some(head), Err(_)) = (head, std::env::var("HERALD_COMMIT")) {
        assert!(
            looks_like_a_hash && head.starts_with(commit),
            "built from {head}, says {printed:?}"
        );
    }
}

/// Issue 27: `herald serve` says where the console is and how to make a token to sign in
/// with; `HERALD_METRICS_LISTEN` serves `/metrics` on an address of its own, and the public
/// listener no longer does.
#[tokio::test]
async fn serve_prints_the_console_and_serves_metrics_where_told() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_listen = format!("127.0.0.1:{port}");
    let (mut child, base) = spawn_serve(
        dir.path(),
        &[],
        &[
            ("HERALD_METRICS_LISTEN", metrics_listen.as_str()),
            ("RUST_LOG", "warn"),
        ],
        std::process::Stdio::piped(),
    )
    .await;
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = String::new();
    while !said.contains("metrics: ") {
        let line = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
            .await
            .expect("herald serve said nothing about the console")
            .unwrap()
            .unwrap();
        said.push_str(&line);
        said.push('\n');
    }
    assert!(
        said.contains(&format!("console: {base}/console/")),
        "{said}"
    );
    assert!(
        said.contains("herald tokens create --project YOUR_PROJECT --data-dir "),
        "{said}"
    );
    assert!(
        said.contains(&format!("metrics: http://{metrics_listen}/metrics")),
        "{said}"
    );
    let http = reqwest::Client::new();
    let public = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
    let text = http
        .get(format!("http://{metrics_listen}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 200);
    assert!(text.text().await.unwrap().contains("# TYPE"));
    terminate(&mut child).await;
}
