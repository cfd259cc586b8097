//! The receiver kit end to end, as a newcomer runs it in two terminals: `herald serve`,
//! `herald listen` and `herald emit` as child processes; the listener reports verified
//! callbacks of both flavours and flags a key that does not match.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{cli_json, cli_token, spawn_serve};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const KEY: &str = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";

/// `herald listen --json` on a free port; returns it, its port and its output lines. The
/// "listening on" line is on stderr, so that stdout is only callbacks (`| jq` works).
async fn listen(args: &[&str]) -> (Child, u16, Lines<BufReader<ChildStdout>>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(HERALD)
        .args(["listen", "--json", "--port", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
    let announced = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = errors.next_line().await.unwrap() {
            if line.starts_with("listening on ") {
                return;
            }
        }
        panic!("herald listen ended without saying where it listens");
    });
    announced.await.unwrap();
    // Keep reading stderr: a closed pipe would fail the listener's next write there.
    tokio::spawn(async move { while let Ok(Some(_)) = errors.next_line().await {} });
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, port, lines)
}

async fn next_callback(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("no callback reached herald listen")
        .unwrap()
        .unwrap();
    serde_json::from_str(&line).unwrap()
}

async fn emit(base: &str, creds: &Value, args: &[&str]) -> String {
    let out = Command::new(HERALD)
        .args([
            "emit",
            "--endpoint",
            base,
            "--project",
            creds["project_id"].as_str().unwrap(),
        ])
        .args([
            "--ak",
            creds["access_key"].as_str().unwrap(),
            "--sk",
            creds["secret_key"].as_str().unwrap(),
        ])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_listen_and_emit_show_a_verified_callback() {
    let data_dir = tempfile::tempdir().unwrap();
    let (_serve, base) = spawn_serve(
        data_dir.path(),
        &["--allow-private-targets"],
        &[],
        Stdio::null(),
    )
    .await;
    let creds = cli_json(
        data_dir.path(),
        &["credentials", "create", "--project", "p1", "--json"],
    )
    .await;
    let token = cli_token(data_dir.path(), "p1").await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        http.request(method, format!("{base}{path}"))
            .header("x-auth-token", &token)
            .json(&body)
            .send()
    };

    // Live: a config signing with the listener's key, and one with another key.
    let (_live, live_port, mut live) = listen(&["--key", KEY]).await;
    for (domain, key) in [
        ("push.example.com", KEY),
        ("other.example.com", "0000000000000000000000000000000Z"),
    ] {
        let config = json!({"publish_domain": domain, "app": "*", "notify_callback_url": format!("http://127.0.0.1:{live_port}/cb"),
            "key": key, "notify_event_subscription": ["RECORD_FILE_COMPLETE"]});
        assert_eq!(
            call(reqwest::Method::POST, "/v1/p1/record/callbacks", config)
                .await
                .unwrap()
                .status(),
            201
        );
    }
    let answer = emit(
        &base,
        &creds,
        &[
            "--domain",
            "push.example.com",
            "--app",
            "live",
            "--stream",
            "mystream",
            "--type",
            "RECORD_FILE_COMPLETE",
            "--event-id",
            "kit-1",
            "--field",
            "file_size=3957964",
            "--field",
            "download_url=https://obs.example.com/a.m3u8",
        ],
    )
    .await;
    assert!(
        answer.starts_with("202 ") && answer.contains(r#""deliveries":1"#),
        "{answer}"
    );
    let got = next_callback(&mut live).await;
    assert_eq!(
        (got["verified"].as_bool(), got["problem"].clone()),
        (Some(true), Value::Null),
        "{got}"
    );
    assert_eq!(
        (got["event_type"].as_str(), got["event_id"].as_str()),
        (Some("RECORD_FILE_COMPLETE"), Some("kit-1"))
    );
    assert_eq!(got["attempt"], json!(1), "attempt is a number: {got}");
    assert_eq!(
        (got["event_type"].as_str(), got["event_id"].as_str()),
        (Some("RECORD_FILE_COMPLETE"), Some("kit-1"))
    );
    assert_eq!(got["body"]["file_size"], 3957964);
    emit(
        &base,
        &creds,
        &[
            "--domain",
            "other.example.com",
            "--app",
            "live",
            "--stream",
            "s",
            "--type",
            "RECORD_FILE_COMPLETE",
        ],
    )
    .await;
    let forged = next_callback(&mut live).await;
    assert_eq!(
        (forged["verified"].as_bool(), forged["problem"].as_str()),
        (Some(false), Some("bad signature")),
        "{forged}"
    );

    // RTC: an app whose record callback signs with the listener's auth key.
    let (_rtc, rtc_port, mut rtc) = listen(&["--rtc", "--key", KEY]).await;
    let created: Value = call(
        reqwest::Method::POST,
        "/v2/apps",
        json!({"app_name": "kit"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let app_id = created["app_id"].as_str().unwrap();
    let callback = json!({"url": format!("http://127.0.0.1:{rtc_port}/rtc"), "auth_key": KEY});
    let set = call(
        reqwest::Method::PUT,
        &format!("/v2/apps/{app_id}/record-callback"),
        callback,
    )
    .await
    .unwrap();
    assert_eq!(set.status(), 200);
    emit(
        &base,
        &creds,
        &[
            "--app-id",
            app_id,
            "--stream",
            "room-stream",
            "--type",
            "RECORD_NEW_FILE_START",
            "--field",
            "room_id=room01",
        ],
    )
    .await;
    let got = next_callback(&mut rtc).await;
    assert_eq!(
        (got["verified"].as_bool(), got["event_type"].as_str()),
        (Some(true), Some("RECORD_NEW_FILE_START")),
        "{got}"
    );
    assert_eq!(
        (
            got["body"]["app_id"].as_str(),
            got["body"]["room_id"].as_str()
        ),
        (Some(app_id), Some("room01"))
    );
}
