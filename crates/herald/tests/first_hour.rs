//! A newcomer's first hour with the binary (issue 28): each mistake they make gets an
//! answer that says what to do, and what the CLI prints is what the running server uses.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::{run_cli, spawn_serve};
use serde_json::Value;

/// `herald ARGS --data-dir DIR` with `env`, whatever its exit status; a command still
/// running after 30 s (a server that should have refused to start) fails the test.
async fn herald(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("HERALD_MASTER_KEY")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("herald {args:?} was still running after 30 s"))
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A master key other than the database's stops the embedded store at start-up, as on
/// PostgreSQL, saying which key was used and which one wins; the CLI refuses it too.
#[tokio::test]
async fn a_wrong_master_key_stops_the_embedded_store_and_says_which_key() {
    let data_dir = tempfile::tempdir().unwrap();
    run_cli(
        data_dir.path(),
        &["credentials", "create", "--project", "p1"],
    )
    .await;
    let other = "ab".repeat(32);
    for args in [
        &["serve", "--listen", "127.0.0.1:0"][..],
        &["credentials", "list"][..],
    ] {
        let out = herald(data_dir.path(), args, &[("HERALD_MASTER_KEY", &other)]).await;
        let said = stderr(&out);
        assert!(!out.status.success(), "herald {args:?} started: {said}");
        assert!(
            said.contains("HERALD_MASTER_KEY, which wins over the data dir's master.key")
                && said.contains("is ignored while it is set"),
            "herald {args:?}: {said}"
        );
    }
    // The data dir's own key still works.
    run_cli(data_dir.path(), &["credentials", "list"]).await;
}

/// With `RUST_BACKTRACE=1`, a mistake prints its message and exits 2, with no backtrace;
/// `tokens revoke` given the token itself says it wants the id from `tokens list`, whose
/// output starts with a header row.
#[tokio::test]
async fn mistakes_print_a_message_and_exit_2_without_a_backtrace() {
    let data_dir = tempfile::tempdir().unwrap();
    let token = common::cli_token(data_dir.path(), "p1").await;
    let out = herald(
        data_dir.path(),
        &["tokens", "revoke", &token],
        &[("RUST_BACKTRACE", "1")],
    )
    .await;
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("the ID column of `herald tokens list`"),
        "{said}"
    );
    assert!(!said.to_lowercase().contains("backtrace"), "{said}");
    let listed = run_cli(data_dir.path(), &["tokens", "list"]).await;
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.starts_with("ID\tPROJECT\tCREATED\tEXPIRES\n"),
        "{listed}"
    );
    let keys = run_cli(data_dir.path(), &["credentials", "list"]).await;
    assert!(
        String::from_utf8(keys.stdout)
            .unwrap()
            .starts_with("ACCESS_KEY\tPROJECT\tCREATED\n")
    );
}

/// A misspelled `HERALD_*` variable is warned about, with the one it likely meant.
#[tokio::test]
async fn a_misspelled_variable_is_warned_about() {
    let data_dir = tempfile::tempdir().unwrap();
    let out = herald(
        data_dir.path(),
        &["tokens", "list"],
        &[("HERALD_RETENTON", "1d")],
    )
    .await;
    let said = stderr(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("HERALD_RETENTON is not a Herald setting")
            && said.contains("did you mean HERALD_RETENTION?"),
        "{said}"
    );
}

/// `herald sources create` prints the hook URL of the server running on the data dir (not
/// a guess from its own settings), says which base it used, and warns about a record dir
/// that does not exist.
#[tokio::test]
async fn sources_get_the_running_servers_hook_url_and_a_missing_record_dir_is_warned_about() {
    let data_dir = tempfile::tempdir().unwrap();
    let roots = tempfile::tempdir().unwrap();
    let roots_env = roots.path().to_str().unwrap();
    let (_serve, base) = spawn_serve(
        data_dir.path(),
        &[],
        &[("HERALD_RECORD_ROOTS", roots_env)],
        Stdio::null(),
    )
    .await;
    assert_ne!(base, "http://127.0.0.1:8080");
    let missing = roots.path().join("not-made-yet");
    let out = herald(
        data_dir.path(),
        &[
            "sources",
            "create",
            "--project",
            "p1",
            "--engine",
            "nginx-rtmp",
            "--publish-domain",
            "push.example.com",
            "--record-dir",
            missing.to_str().unwrap(),
            "--json",
        ],
        &[("HERALD_RECORD_ROOTS", roots_env)],
    )
    .await;
    let said = stderr(&out);
    assert!(out.status.success(), "{said}");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hook = created["hook_url"].as_str().unwrap();
    assert!(
        hook.starts_with(&format!("{base}/hooks/nginx-rtmp/")),
        "{hook} is not on {base}"
    );
    assert!(
        said.contains(&format!(
            "hook URLs use {base}, from the URL the server last started with"
        )),
        "{said}"
    );
    assert!(
        said.contains("does not exist") && said.contains(missing.to_str().unwrap()),
        "{said}"
    );
}

/// An event that matches no config is said to: its answer says why, and
/// `herald_events_unmatched_total{flavour,event_type}` counts it.
#[tokio::test]
async fn an_event_that_matches_no_config_is_said_to() {
    let data_dir = tempfile::tempdir().unwrap();
    let (_serve, base) = spawn_serve(
        data_dir.path(),
        &["--allow-private-targets"],
        &[],
        Stdio::null(),
    )
    .await;
    let token = common::cli_token(data_dir.path(), "p1").await;
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{base}/v1/p1/record/callbacks"))
        .header("x-auth-token", &token)
        .json(
            &serde_json::json!({"publish_domain": "push.example.com", "app": "live",
            "notify_callback_url": "http://127.0.0.1:9/cb"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let answer: Value = http
        .post(format!("{base}/v1/p1/record/events"))
        .header("x-auth-token", &token)
        .json(
            &serde_json::json!({"event_type": "RECORD_START", "publish_domain": "push.example.com",
            "app": "live", "stream": "cam"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["deliveries"], 0, "{answer}");
    assert!(
        answer["note"].as_str().unwrap_or_default().starts_with(
            "0 deliveries: no config subscribes to RECORD_START for push.example.com/live"
        ),
        "{answer}"
    );
    let delivered: Value = http
        .post(format!("{base}/v1/p1/record/events"))
        .header("x-auth-token", &token)
        .json(&serde_json::json!({"event_type": "RECORD_FILE_COMPLETE", "publish_domain": "push.example.com",
            "app": "live", "stream": "cam"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(delivered["deliveries"], 1, "{delivered}");
    assert!(delivered.get("note").is_none(), "{delivered}");
    let metrics = common::metrics_text(&http, &base).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_events_unmatched_total")
                && l.contains(r#"flavour="live""#)
                && l.contains(r#"event_type="RECORD_START""#)
                && l.ends_with(" 1")),
        "{metrics}"
    );
}
