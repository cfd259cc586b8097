//! A Herald server on port 0 with a fresh data dir, and a client that signs like the SDK.
//!
//! With `HERALD_TEST_BACKEND=postgres`, the in-process server runs on a fresh schema of
//! `HERALD_TEST_DATABASE_URL` instead of the embedded store, so the same API tests cover
//! both backends (`scripts/test` runs them that way too).

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)] // Each test binary uses a different part of this module.

pub mod garage;
pub mod media;
pub mod receiver;

use tokio::process::Command;

use herald::app::{self, Running};
use herald::settings::Settings;
use herald_core::sdk_auth::{WireRequest, authorization_header, sdk_date};
use herald_store::testing::TestSchema;
use reqwest::{Method, Response};
use serde_json::Value;
use sqlx::Connection;
use time::{Duration, OffsetDateTime};

pub struct TestServer {
    pub base: String,
    pub data_dir: tempfile::TempDir,
    pub http: reqwest::Client,
    running: Option<Running>,
    /// The PostgreSQL schema the server runs on, when it does; the CLI is pointed at it.
    schema: Option<TestSchema>,
}

/// The variable that puts [`TestServer`] on PostgreSQL: `postgres`, or unset for the
/// embedded store.
pub const TEST_BACKEND: &str = "HERALD_TEST_BACKEND";

/// A fresh schema when the tests are to run on PostgreSQL.
pub async fn test_schema() -> Option<TestSchema> {
    match std::env::var(TEST_BACKEND).as_deref() {
        Ok("postgres") => {
            Some(TestSchema::create().await.unwrap_or_else(|| {
                panic!("{TEST_BACKEND}=postgres needs HERALD_TEST_DATABASE_URL")
            }))
        }
        Ok("" | "embedded") | Err(_) => None,
        Ok(other) => panic!("{TEST_BACKEND}={other}: expected postgres or embedded"),
    }
}

/// The record root every test server allows: the system's temporary directory (real
/// path), where each test makes its record dirs with `tempfile`. Sources are refused
/// without a root (SPEC §7), so tests that want that set their own.
pub fn test_record_root() -> String {
    std::env::temp_dir()
        .canonicalize()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// A retry schedule written as in `HERALD_RETRY_SCHEDULE`.
pub fn schedule(raw: &str) -> herald_core::retry::RetrySchedule {
    herald_core::retry::RetrySchedule::parse("retry_schedule", raw).unwrap()
}

/// An AK/SK pair and the project it belongs to.
#[derive(Clone)]
pub struct Creds {
    pub project: String,
    pub ak: String,
    pub sk: String,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let schema = test_schema().await;
        let mut settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.path().to_owned(),
            database_url: schema
                .as_ref()
                .map(|s| secrecy::SecretString::from(s.url.clone())),
            database_pool_size: 4,
            record_roots: herald_core::source::RecordRoots::parse_list(
                "record_roots",
                &test_record_root(),
            )
            .unwrap(),
            ..Settings::default()
        };
        adjust(&mut settings);
        let running = app::start(&settings).await.unwrap();
        Self {
            base: format!("http://{}", running.local_addr),
            data_dir,
            http: client(),
            running: Some(running),
            schema,
        }
    }

    /// A signing client for a server this process did not start (e.g. a child `herald`).
    pub fn client_for(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            data_dir: tempfile::tempdir().unwrap(),
            http: client(),
            running: None,
            schema: None,
        }
    }

    /// Runs the real `herald` binary against this server's data dir, as an operator would
    /// while the server runs. Asynchronously: the server may share this test's thread, and
    /// must keep running (and finish its transactions) while the command waits.
    pub async fn herald(&self, args: &[&str]) -> std::process::Output {
        let env: Vec<(&str, &str)> = self
            .schema
            .iter()
            .map(|s| ("HERALD_DATABASE_URL", s.url.as_str()))
            .collect();
        run_cli_with(self.data_dir.path(), args, &env).await
    }

    /// The PostgreSQL URL the server runs on, when it does.
    pub fn database_url(&self) -> Option<String> {
        self.schema.as_ref().map(|s| s.url.clone())
    }

    /// Runs `sql` on the server's database behind Herald's back (to corrupt a row, say).
    pub async fn execute_behind_herald(&self, sql: &str) {
        match &self.schema {
            Some(schema) => {
                let pool = sqlx::PgPool::connect(&schema.url).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            None => {
                let db = self
                    .data_dir
                    .path()
                    .join(herald_store::sqlite::DATABASE_FILE);
                let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
                    .await
                    .unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
        }
    }

    /// Holds the database's write lock behind Herald's back, as a stuck disk or a long
    /// CLI transaction would, until the returned guard is dropped. On the embedded store
    /// every write then waits (and after the busy timeout fails); on PostgreSQL the rows of
    /// the deliveries in flight are locked, which their completions update (a first-try
    /// success writes nothing else), while claims, which skip locked rows, go on.
    pub async fn hold_writes_behind_herald(&self) -> HeldWrites {
        let conn = match &self.schema {
            Some(schema) => {
                let mut conn = sqlx::PgConnection::connect(&schema.url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
                let locked =
                    sqlx::query("SELECT id FROM deliveries WHERE state = 'running' FOR UPDATE")
                        .fetch_all(&mut conn)
                        .await
                        .unwrap();
                assert!(!locked.is_empty(), "no delivery in flight to hold");
                HeldConnection::Postgres(conn)
            }
            None => {
                let db = self
                    .data_dir
                    .path()
                    .join(herald_store::sqlite::DATABASE_FILE);
                let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
                    .await
                    .unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                HeldConnection::Sqlite(conn)
            }
        };
        HeldWrites(Some(conn))
    }

    pub async fn credentials(&self, project: &str) -> Creds {
        let out = self
            .herald(&["credentials", "create", "--project", project, "--json"])
            .await;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Creds {
            project: v["project_id"].as_str().unwrap().to_owned(),
            ak: v["access_key"].as_str().unwrap().to_owned(),
            sk: v["secret_key"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn token(&self, project: &str) -> String {
        let out = self
            .herald(&["tokens", "create", "--project", project, "--json"])
            .await;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// A request signed as the SDK signs it, dated `now + skew`.
    pub async fn signed_at(
        &self,
        creds: &Creds,
        method: Method,
        path_and_query: &str,
        body: Option<&str>,
        skew: Duration,
    ) -> Response {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let host = self.base.trim_start_matches("http://").to_owned();
        let mut headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("host".to_owned(), host),
            ("x-project-id".to_owned(), creds.project.clone()),
            (
                "x-sdk-date".to_owned(),
                sdk_date(OffsetDateTime::now_utc() + skew),
            ),
        ];
        let body = body.unwrap_or("");
        let wire = WireRequest {
            method: method.as_str(),
            raw_path: path,
            raw_query: query,
            headers: &headers,
            body: body.as_bytes(),
        };
        let authorization = authorization_header(&wire, &creds.ak, &creds.sk).unwrap();
        headers.push(("authorization".to_owned(), authorization));
        let mut request = self
            .http
            .request(method, format!("{}{path_and_query}", self.base));
        for (name, value) in headers.into_iter().filter(|(n, _)| n != "host") {
            request = request.header(name, value);
        }
        request.body(body.to_owned()).send().await.unwrap()
    }

    /// POSTs JSON with an `X-Auth-Token`.
    pub async fn post_with_token(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("x-auth-token", token)
            .json(body)
            .send()
            .await
            .unwrap();
        json(response).await
    }

    /// GETs with an `X-Auth-Token`.
    pub async fn get_with_token(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("x-auth-token", token)
            .send()
            .await
            .unwrap();
        json(response).await
    }

    pub async fn signed(
        &self,
        creds: &Creds,
        method: Method,
        path_and_query: &str,
        body: Option<&str>,
    ) -> Response {
        self.signed_at(creds, method, path_and_query, body, Duration::ZERO)
            .await
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown.cancel();
        }
    }
}

/// `herald serve` as a child process on a free port of 127.0.0.1, with `args` added and
/// `env` set; returns it (killed on drop) and its base URL, read from its first line.
pub async fn spawn_serve(
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("HERALD_RECORD_ROOTS", test_record_root())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("herald serve did not announce its address")
        .unwrap()
        .unwrap();
    let base = line.strip_prefix("listening on ").unwrap().to_owned();
    (child, base)
}

/// Runs a `herald` command against `data_dir` (never with `HERALD_MASTER_KEY`, so the
/// data dir's own key is used), and fails the test unless it succeeds.
pub async fn run_cli(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    run_cli_with(data_dir, args, &[]).await
}

/// [`run_cli`] with `env` set (it may set `HERALD_MASTER_KEY` again).
pub async fn run_cli_with(
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("HERALD_MASTER_KEY")
        .env("HERALD_RECORD_ROOTS", test_record_root())
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a `herald` command with `--data-dir` and parses its one line of JSON.
pub async fn cli_json(data_dir: &std::path::Path, args: &[&str]) -> Value {
    serde_json::from_slice(&run_cli(data_dir, args).await.stdout).unwrap()
}

/// A new `X-Auth-Token` for `project`, made by `herald tokens create`.
pub async fn cli_token(data_dir: &std::path::Path, project: &str) -> String {
    let created = cli_json(
        data_dir,
        &["tokens", "create", "--project", project, "--json"],
    )
    .await;
    created["token"].as_str().unwrap().to_owned()
}

/// Sends SIGTERM and waits (at most 15 s) for the child to exit.
pub async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    tokio::time::timeout(std::time::Duration::from_secs(15), child.wait())
        .await
        .expect("herald did not stop on SIGTERM")
        .unwrap()
}

/// The Prometheus text of a server's `/metrics`.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Status and JSON body (Null when the body is empty).
pub async fn json(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, body)
}

/// The database's write lock, held until dropped (see
/// [`TestServer::hold_writes_behind_herald`]); dropping the connection ends its transaction.
pub struct HeldWrites(Option<HeldConnection>);

enum HeldConnection {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}
