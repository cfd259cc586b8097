//! SPEC §3 end to end: AK/SK signatures, tokens, project isolation, body bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, json};
use reqwest::Method;
use serde_json::{Value, json};
use time::Duration;

const LIST: &str = "/v1/p1/record/callbacks";

async fn assert_unauthenticated(response: reqwest::Response) {
    let (status, err) = json(response).await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (401, Some("APIGW.0301")),
        "{err}"
    );
}

#[tokio::test]
async fn credentials_created_while_running_work_at_once() {
    let server = TestServer::start().await;
    // The server is already up; the CLI writes to its store from another process.
    let c = server.credentials("p1").await;
    assert_eq!(
        server.signed(&c, Method::GET, LIST, None).await.status(),
        200
    );
    server.herald(&["credentials", "revoke", &c.ak]).await;
    assert_unauthenticated(server.signed(&c, Method::GET, LIST, None).await).await;
}

#[tokio::test]
async fn bad_signatures_are_refused() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let mut wrong_sk = c.clone();
    wrong_sk
        .sk
        .replace_range(0..1, if c.sk.starts_with('a') { "b" } else { "a" });
    assert_unauthenticated(server.signed(&wrong_sk, Method::GET, LIST, None).await).await;
    let mut unknown = c.clone();
    unknown.ak = "AKDOESNOTEXIST000000".into();
    assert_unauthenticated(server.signed(&unknown, Method::GET, LIST, None).await).await;
    for skew in [Duration::minutes(16), Duration::minutes(-16)] {
        assert_unauthenticated(server.signed_at(&c, Method::GET, LIST, None, skew).await).await;
    }
    assert_eq!(
        server
            .signed_at(&c, Method::GET, LIST, None, Duration::minutes(-14))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_request_changed_after_signing_is_refused() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let signed = server
        .signed(
            &c,
            Method::POST,
            LIST,
            Some(r#"{"publish_domain": "d.com", "app": "a"}"#),
        )
        .await;
    assert_eq!(signed.status(), 201);
    // Replay the same signature over another body, another query and another path.
    let request = |path: &str, body: &str| {
        let host = server.base.trim_start_matches("http://").to_owned();
        let date = herald_core::sdk_auth::sdk_date(time::OffsetDateTime::now_utc());
        let headers = vec![("host".to_owned(), host), ("x-sdk-date".to_owned(), date)];
        let wire = herald_core::sdk_auth::WireRequest {
            method: "POST",
            raw_path: LIST,
            raw_query: "",
            headers: &headers,
            body: br#"{"publish_domain": "d.com", "app": "b"}"#,
        };
        let auth = herald_core::sdk_auth::authorization_header(&wire, &c.ak, &c.sk).unwrap();
        server
            .http
            .post(format!("{}{path}", server.base))
            .header("x-sdk-date", headers[1].1.clone())
            .header("authorization", auth)
            .body(body.to_owned())
            .send()
    };
    assert_eq!(
        request(LIST, r#"{"publish_domain": "d.com", "app": "b"}"#)
            .await
            .unwrap()
            .status(),
        201
    );
    assert_unauthenticated(
        request(LIST, r#"{"publish_domain": "d.com", "app": "c"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_unauthenticated(
        request(
            &format!("{LIST}?x=1"),
            r#"{"publish_domain": "d.com", "app": "b"}"#,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_unauthenticated(
        request(
            "/v1/p2/record/callbacks",
            r#"{"publish_domain": "d.com", "app": "b"}"#,
        )
        .await
        .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn missing_or_malformed_credentials_are_refused() {
    let server = TestServer::start().await;
    let url = format!("{}{LIST}", server.base);
    assert_unauthenticated(server.http.get(&url).send().await.unwrap()).await;
    assert_unauthenticated(
        server
            .http
            .get(&url)
            .header("authorization", "Basic dXNlcjpwYXNz")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_unauthenticated(
        server
            .http
            .get(&url)
            .header(
                "authorization",
                "SDK-HMAC-SHA256 Access=AK, SignedHeaders=host, Signature=00",
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_unauthenticated(
        server
            .http
            .get(&url)
            .header("x-auth-token", "herald_guess")
            .send()
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn tokens_authenticate_for_their_project_only() {
    let server = TestServer::start().await;
    let token = server.token("p1").await;
    let get = |path: &str| {
        server
            .http
            .get(format!("{}{path}", server.base))
            .header("x-auth-token", &token)
            .send()
    };
    assert_eq!(get(LIST).await.unwrap().status(), 200);
    let (status, _) = json(get("/v1/p2/record/callbacks").await.unwrap()).await;
    assert_eq!(status, 403);
}

/// SPEC §6: `herald tokens create --ttl`, `list` and `revoke`, run while the server runs;
/// a revoked or expired token is refused at once.
#[tokio::test]
async fn tokens_expire_and_are_revoked_at_once() {
    let server = TestServer::start().await;
    let created = |args: &'static [&'static str]| async {
        let out = server.herald(args).await;
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let lasting = created(&["tokens", "create", "--project", "p1", "--json"]).await;
    let brief = created(&[
        "tokens",
        "create",
        "--project",
        "p1",
        "--ttl",
        "2s",
        "--json",
    ])
    .await;
    assert!(lasting["expires_at"].is_null(), "{lasting}");
    assert!(
        brief["expires_at"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z')),
        "{brief}"
    );
    let status = |token: Value| {
        let request = server
            .http
            .get(format!("{}{LIST}", server.base))
            .header("x-auth-token", token.as_str().unwrap());
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(lasting["token"].clone()).await, 200);
    assert_eq!(status(brief["token"].clone()).await, 200);

    let out = server
        .herald(&["tokens", "list", "--project", "p1", "--json"])
        .await;
    let listed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = listed.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&lasting["id"].as_str().unwrap()));
    let text = serde_json::to_string(&listed).unwrap();
    assert!(
        !text.contains(lasting["token"].as_str().unwrap()),
        "a listed token shows the token itself"
    );

    server
        .herald(&["tokens", "revoke", lasting["id"].as_str().unwrap()])
        .await;
    assert_eq!(status(lasting["token"].clone()).await, 401, "revoked");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(brief["token"].clone()).await == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the 2 s token never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(status(brief["token"].clone()).await, 401, "expired");
    let out = server
        .herald(&["tokens", "list", "--project", "p1", "--json"])
        .await;
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["expired"], true, "{listed}");
}

#[tokio::test]
async fn another_projects_resources_are_never_shown() {
    let server = TestServer::start().await;
    let owner = server.credentials("p1").await;
    let intruder = server.credentials("p2").await;
    let request = json!({"publish_domain": "d.com", "app": "a", "notify_callback_url": "https://cb.example.com/secret"}).to_string();
    let (_, created) = json(
        server
            .signed(&owner, Method::POST, LIST, Some(&request))
            .await,
    )
    .await;
    let item = format!("{LIST}/{}", created["id"].as_str().unwrap());
    // Another project's credentials on this project's paths: refused, nothing shown.
    for (method, path, body) in [
        (Method::GET, LIST, None),
        (Method::POST, LIST, Some(request.as_str())),
        (Method::GET, item.as_str(), None),
        (Method::PUT, item.as_str(), Some(request.as_str())),
        (Method::DELETE, item.as_str(), None),
    ] {
        // Signed with p2's key but claiming p2 while addressing p1.
        let response = server.signed(&intruder, method.clone(), path, body).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, 403, "{method} {path}: {text}");
        assert!(!text.contains("cb.example.com"), "{text}");
    }
    // The intruder's own project does not have it either.
    let foreign_item = item.replace("/p1/", "/p2/");
    let (status, err) = json(
        server
            .signed(&intruder, Method::GET, &foreign_item, None)
            .await,
    )
    .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (404, Some("LIVE.100011004"))
    );
    let (_, still) = json(server.signed(&owner, Method::GET, &item, None).await).await;
    assert_eq!(still, created);
}

#[tokio::test]
async fn project_header_must_match_the_credential() {
    let server = TestServer::start().await;
    let mut c = server.credentials("p1").await;
    c.project = "p2".into(); // the signed X-Project-Id now claims p2
    let (status, err) = json(server.signed(&c, Method::GET, LIST, None).await).await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (403, Some("APIGW.0302"))
    );
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_refused() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let huge = format!(
        r#"{{"publish_domain": "d.com", "app": "a", "pad": "{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let (status, err) = json(server.signed(&c, Method::POST, LIST, Some(&huge)).await).await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (400, Some("LIVE.100011001"))
    );
    assert_eq!(err["error_msg"], "body: must be at most 1 MiB");

    // On the RTC paths the refusal carries the RTC code, whether the body declares its
    // length (refused before it is read) or arrives in chunks (refused once it grows past
    // the bound).
    let huge_app = format!(r#"{{"app_name": "{}"}}"#, "x".repeat(1024 * 1024));
    let (status, err) = json(
        server
            .signed(&c, Method::POST, "/v2/apps", Some(&huge_app))
            .await,
    )
    .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (400, Some("RTC.00001003"))
    );
    let bound = "body: must be at most 1 MiB";
    assert!(err["error_msg"].as_str().unwrap().contains(bound), "{err}");
    let token = server.token("p1").await;
    let answer = chunked_post(&server.base, "/v2/apps", &token, 1024 * 1024 + 1).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("RTC.00001003") && answer.contains(bound),
        "{answer}"
    );
}

/// POSTs `size` bytes in 64 KiB chunks (no `Content-Length`) over a raw socket, with a
/// token, and returns the answer as text.
async fn chunked_post(base: &str, path: &str, token: &str, size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: herald\r\nX-Auth-Token: {token}\r\n\
         Content-Type: application/json\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        let n = chunk.len().min(size - sent);
        let frame = [format!("{n:x}\r\n").as_bytes(), &chunk[..n], b"\r\n"].concat();
        if socket.write_all(&frame).await.is_err() {
            break; // the server answered and closed while the body was still coming
        }
        sent += n;
    }
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        socket.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn config_file_credentials_are_honoured() {
    // Long and random enough: serve refuses shorter or placeholder secrets in the file.
    const SECRET_FROM_CONFIG: &str = "secret-from-config-file-9f3a7c1e5b2d8046";
    const TOKEN_FROM_CONFIG: &str = "token-from-config-4e8b2a6f1c9d7053ab";
    let server = TestServer::start_with(|s| {
        s.credentials.push(herald::settings::StaticAccessKey {
            project_id: "p1".into(),
            access_key: "AKFROMCONFIGFILE0001".into(),
            secret_key: SECRET_FROM_CONFIG.into(),
        });
        s.tokens.push(herald::settings::StaticToken {
            project_id: "p1".into(),
            token: TOKEN_FROM_CONFIG.into(),
        });
    })
    .await;
    let c = common::Creds {
        project: "p1".into(),
        ak: "AKFROMCONFIGFILE0001".into(),
        sk: SECRET_FROM_CONFIG.into(),
    };
    assert_eq!(
        server.signed(&c, Method::GET, LIST, None).await.status(),
        200
    );
    let by_token = server
        .http
        .get(format!("{}{LIST}", server.base))
        .header("x-auth-token", TOKEN_FROM_CONFIG)
        .send()
        .await
        .unwrap();
    assert_eq!(by_token.status(), 200);
}

/// A bare `+` in a query is a space to the handlers (form-urlencoded), so the signature
/// must cover a space there too: a client that sends spaces as `+` and signs them as `%20`
/// (as the SDK's canonical form has it) is accepted, and a signature over a literal plus
/// does not cover a query the handler reads with a space.
#[tokio::test]
async fn a_plus_in_the_query_is_signed_as_the_space_it_means() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let get = |signed_query: &'static str, sent_query: &'static str| {
        let host = server.base.trim_start_matches("http://").to_owned();
        let date = herald_core::sdk_auth::sdk_date(time::OffsetDateTime::now_utc());
        let headers = vec![("host".to_owned(), host), ("x-sdk-date".to_owned(), date)];
        let wire = herald_core::sdk_auth::WireRequest {
            method: "GET",
            raw_path: LIST,
            raw_query: signed_query,
            headers: &headers,
            body: b"",
        };
        let auth = herald_core::sdk_auth::authorization_header(&wire, &c.ak, &c.sk).unwrap();
        server
            .http
            .get(format!("{}{LIST}?{sent_query}", server.base))
            .header("x-sdk-date", headers[1].1.clone())
            .header("authorization", auth)
            .send()
    };
    let (status, list) = json(get("app=a%20b", "app=a+b").await.unwrap()).await;
    assert_eq!((status, &list["total"]), (200, &json!(0)), "{list}");
    assert_unauthenticated(get("app=a%2Bb", "app=a+b").await.unwrap()).await;
    assert_eq!(get("app=a%2Bb", "app=a%2Bb").await.unwrap().status(), 200);
}
