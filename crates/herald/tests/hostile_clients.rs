//! What a client of the API can hold of the server (issue 24): before it is
//! authenticated, nothing — no body is read before the credentials are checked, trickled
//! headers and bodies are cut off at their timeouts, and connections beyond the cap wait
//! while the server goes on serving (raw sockets, since a well-behaved HTTP client cannot
//! misbehave like this; timeouts are set short through the settings); once authenticated,
//! no more than `HERALD_MAX_PER_PROJECT` configs, apps and sources.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use herald_core::sdk_auth::sdk_date;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than any answer here takes, far shorter than the timeouts a test does not
/// shorten (so a server that waits for a body fails the test rather than answering late).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const ONE_MIB: usize = 1024 * 1024;

fn addr(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Reads until the end of a response head, the end of the stream, or an error; returns
/// what was read as text (empty when the server closed without answering).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads until the server closes the connection (or resets it).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `byte` every 100 ms until the server stops taking it: a client that trickles.
fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: &'static [u8]) {
    tokio::spawn(async move {
        for byte in bytes.iter().cycle() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[tokio::test]
async fn requests_without_valid_credentials_are_refused_before_their_body_is_read() {
    // A long body timeout: a server that waited for the body would not answer in time.
    let server = TestServer::start_with(|s| s.body_read_timeout = Duration::from_secs(120)).await;
    let creds = server.credentials("p1").await;
    let now = sdk_date(OffsetDateTime::now_utc());
    let stale = sdk_date(OffsetDateTime::now_utc() - time::Duration::hours(1));
    let signed = |ak: &str, date: &str, signed_headers: &str| {
        format!(
            "Authorization: SDK-HMAC-SHA256 Access={ak}, SignedHeaders={signed_headers}, \
             Signature={}\r\nX-Sdk-Date: {date}\r\n",
            "0".repeat(64)
        )
    };
    let refusals = [
        String::new(),
        "X-Auth-Token: not-a-token\r\n".to_owned(),
        signed("AKDOESNOTEXIST000000", &now, "host;x-sdk-date"),
        signed(&creds.ak, &stale, "host;x-sdk-date"),
        signed(&creds.ak, &now, "host;x-absent;x-sdk-date"),
        "Authorization: Basic dXNlcjpwYXNz\r\n".to_owned(),
    ];
    let host = addr(&server);
    let mut clients = Vec::new();
    for i in 0..60 {
        let credentials = refusals[i % refusals.len()].clone();
        let host = host.clone();
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&host).await.unwrap();
            let head = format!(
                "POST /v1/p1/record/events HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Type: application/json\r\nContent-Length: {ONE_MIB}\r\n\
                 {credentials}\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            // Not a byte of the declared body is sent.
            let answer = tokio::time::timeout(ANSWER_WITHIN, read_head(&mut stream))
                .await
                .unwrap_or_else(|_| panic!("no answer without a body for {credentials:?}"));
            (credentials, answer)
        }));
    }
    for client in clients {
        let (credentials, answer) = client.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "{credentials:?}: {answer:?}"
        );
    }
    // And the server is fine.
    let healthz = server.http.get(format!("{}/healthz", server.base)).send();
    assert_eq!(healthz.await.unwrap().status(), 200);
}

#[tokio::test]
async fn trickled_headers_are_cut_off_at_the_header_timeout() {
    let server = TestServer::start_with(|s| s.header_read_timeout = Duration::from_secs(1)).await;
    let stream = TcpStream::connect(addr(&server)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n")
        .await
        .unwrap();
    // A header line that never ends, a byte every 100 ms.
    trickle(writer, b"X-Slow: abcdefghijklmnopqrstuvwxyz");
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(ANSWER_WITHIN, reader.read_to_end(&mut answer))
        .await
        .expect("the connection was still open long after the header timeout")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains(" 200 "), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed before the header timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_at_the_body_timeout() {
    let server = TestServer::start_with(|s| s.body_read_timeout = Duration::from_secs(1)).await;
    let token = server.token("p1").await;
    let host = addr(&server);
    let mut stream = TcpStream::connect(&host).await.unwrap();
    let head = format!(
        "POST /v1/p1/record/callbacks HTTP/1.1\r\nHost: {host}\r\nX-Auth-Token: {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{{\"publish_domain\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, writer) = stream.into_split();
    trickle(writer, b" ");
    let started = Instant::now();
    let answer = tokio::time::timeout(ANSWER_WITHIN, async {
        let mut all = Vec::new();
        reader.read_to_end(&mut all).await.ok();
        all
    })
    .await
    .expect("a trickled body held the connection past the body timeout");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("LIVE.100011001"), "{answer}");
    assert!(answer.contains("body"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_while_the_server_recovers() {
    let server = TestServer::start_with(|s| {
        s.max_connections = 2;
        s.header_read_timeout = Duration::from_secs(3);
    })
    .await;
    let host = addr(&server);
    // Two connections that say nothing take both places.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(&host).await.unwrap());
    }
    let mut third = TcpStream::connect(&host).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut early = [0u8; 64];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut early)).await;
    assert!(
        waited.is_err(),
        "a connection beyond the cap was served at once: {:?}",
        waited.map(|n| String::from_utf8_lossy(&early[..n.unwrap_or(0)]).into_owned())
    );
    // The idle ones are closed at the header timeout, and the third is served then.
    let answer = tokio::time::timeout(ANSWER_WITHIN, read_head(&mut third))
        .await
        .expect("the waiting connection was never served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for mut stream in idle {
        let left = tokio::time::timeout(ANSWER_WITHIN, read_to_close(&mut stream))
            .await
            .expect("an idle connection outlived the header timeout");
        assert!(!String::from_utf8_lossy(&left).contains(" 200 "));
    }
    // Beyond the cap is a wait, not a refusal: many clients in turn are all served. (Each
    // closes its connection when answered; an idle keep-alive one would hold its place
    // until the header timeout.)
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..10 {
        let url = format!("{}/healthz", server.base);
        let http = http.clone();
        clients.push(tokio::spawn(async move {
            http.get(url).send().await.map(|r| r.status().as_u16())
        }));
    }
    for client in clients {
        assert_eq!(client.await.unwrap().unwrap(), 200);
    }
}

/// Creates through the API; status and body.
async fn create(server: &TestServer, token: &str, path: &str, body: Value) -> (u16, Value) {
    server.post_with_token(token, path, &body).await
}

fn assert_capped(answer: &(u16, Value), code: &str, what: &str) {
    let (status, body) = answer;
    assert_eq!(
        (*status, body["error_code"].as_str()),
        (400, Some(code)),
        "{body}"
    );
    let message = body["error_msg"].as_str().unwrap_or_default();
    assert!(
        message.contains("HERALD_MAX_PER_PROJECT") && message.contains(what),
        "{message}"
    );
}

#[tokio::test]
async fn a_project_cannot_create_past_its_cap() {
    let server = TestServer::start_with(|s| s.max_per_project = 2).await;
    let token = server.token("p1").await;
    let other = server.token("p2").await;
    let config = |app: &str| json!({"publish_domain": "live.example.com", "app": app});

    let live = "/v1/p1/record/callbacks";
    let mut ids = Vec::new();
    for app in ["a", "b"] {
        let (status, created) = create(&server, &token, live, config(app)).await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let refused = create(&server, &token, live, config("c")).await;
    assert_capped(&refused, "LIVE.100011001", "callback configs");
    // The cap is per project, and a deletion makes room again.
    let (status, _) = create(&server, &other, "/v1/p2/record/callbacks", config("c")).await;
    assert_eq!(status, 201);
    let deleted = server
        .http
        .delete(format!("{}{live}/{}", server.base, ids[0]))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(create(&server, &token, live, config("c")).await.0, 201);

    for name in ["one", "two"] {
        let (status, app) = create(&server, &token, "/v2/apps", json!({"app_name": name})).await;
        assert_eq!(status, 201, "{app}");
    }
    let refused = create(&server, &token, "/v2/apps", json!({"app_name": "three"})).await;
    assert_capped(&refused, "RTC.00001003", "apps");

    let sources = "/v1/p1/record/sources";
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let source = |dir: &tempfile::TempDir| {
        json!({"engine": "srs", "publish_domain": "live.example.com",
               "record_dir": dir.path().canonicalize().unwrap().to_str().unwrap()})
    };
    for dir in &dirs[..2] {
        let (status, created) = create(&server, &token, sources, source(dir)).await;
        assert_eq!(status, 201, "{created}");
    }
    let refused = create(&server, &token, sources, source(&dirs[2])).await;
    assert_capped(&refused, "LIVE.100011001", "recording sources");
}
