//! SPEC §1 end to end: every operation and error path of the Live callback config API,
//! against a real server on port 0 with a fresh data dir.

mod common;

use common::{TestServer, json};
use reqwest::Method;
use serde_json::{Value, json};

const KEY: &str = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";

fn body(v: Value) -> String {
    v.to_string()
}

#[tokio::test]
async fn create_list_show_update_delete() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let base = "/v1/p1/record/callbacks";

    let (status, created) = json(
        server
            .signed(
                &c,
                Method::POST,
                base,
                Some(&body(json!({
                    "publish_domain": "Push.Example.com", "app": "live",
                    "notify_callback_url": "https://cb.example.com/notify",
                    "sign_type": "MD5", "key": KEY,
                }))),
            )
            .await,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["publish_domain"], "push.example.com");
    assert_eq!(created["app"], "live");
    assert_eq!(
        created["notify_callback_url"],
        "https://cb.example.com/notify"
    );
    assert_eq!(
        created["notify_event_subscription"],
        json!(["RECORD_FILE_COMPLETE"])
    );
    assert_eq!(created["sign_type"], "MD5");
    assert!(created.get("key").is_none());
    let time_re = |v: &Value| {
        let s = v.as_str().unwrap();
        s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T'
    };
    assert!(
        time_re(&created["create_time"]) && time_re(&created["update_time"]),
        "{created}"
    );

    let (status, listed) = json(server.signed(&c, Method::GET, base, None).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        listed,
        json!({"total": 1, "callback_config": [created.clone()]})
    );

    let item = format!("{base}/{id}");
    let (status, shown) = json(server.signed(&c, Method::GET, &item, None).await).await;
    assert_eq!((status, &shown), (200, &created));

    // Left-out fields keep their values; publish_domain and app are required.
    let (status, updated) = json(
        server
            .signed(
                &c,
                Method::PUT,
                &item,
                Some(&body(json!({
                    "publish_domain": "push.example.com", "app": "*",
                    "notify_event_subscription": ["RECORD_OVER", "RECORD_START"],
                }))),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["app"], "*");
    assert_eq!(updated["sign_type"], "MD5");
    assert_eq!(
        updated["notify_callback_url"],
        "https://cb.example.com/notify"
    );
    assert_eq!(
        updated["notify_event_subscription"],
        json!(["RECORD_OVER", "RECORD_START"])
    );
    assert_eq!(updated["create_time"], created["create_time"]);

    // "" removes the URL and the key.
    let (status, cleared) = json(
        server
            .signed(&c, Method::PUT, &item, Some(&body(json!({
                "publish_domain": "push.example.com", "app": "*", "notify_callback_url": "", "key": "",
            }))))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert!(cleared.get("notify_callback_url").is_none(), "{cleared}");

    let response = server.signed(&c, Method::DELETE, &item, None).await;
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());
    for method in [Method::GET, Method::DELETE] {
        let (status, err) = json(server.signed(&c, method, &item, None).await).await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (404, Some("LIVE.100011004"))
        );
    }
    let (status, err) = json(
        server
            .signed(
                &c,
                Method::PUT,
                &item,
                Some(&body(json!({"publish_domain": "d.com", "app": "a"}))),
            )
            .await,
    )
    .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (404, Some("LIVE.100011004"))
    );
}

#[tokio::test]
async fn every_validation_rule_names_its_field_and_stores_nothing() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let long_url = format!("https://cb.example.com/{}", "a".repeat(1010));
    // A valid body with `extra`'s fields added or replaced.
    let with = |extra: Value| {
        let mut v = json!({"publish_domain": "d.com", "app": "a"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        body(v)
    };
    let url = |u: &str| with(json!({ "notify_callback_url": u }));
    let sub = |s: Value| with(json!({ "notify_event_subscription": s }));
    let key = |k: &str| with(json!({ "key": k }));
    let cases: Vec<(&str, String)> = vec![
        ("body", "not json".into()),
        ("body", "[1, 2]".into()),
        ("publish_domain", body(json!({"app": "live"}))),
        ("publish_domain", with(json!({"publish_domain": 7}))),
        (
            "publish_domain",
            with(json!({"publish_domain": "bad domain"})),
        ),
        ("app", body(json!({"publish_domain": "d.com"}))),
        ("app", with(json!({"app": ""}))),
        ("app", with(json!({"app": "a/b"}))),
        ("notify_callback_url", url("cb.example.com/x")),
        ("notify_callback_url", url("ftp://cb.example.com/x")),
        ("notify_callback_url", url("https://cb.example.com/x?a=b")),
        ("notify_callback_url", url("https://cb.example.com/x#f")),
        ("notify_callback_url", url(&long_url)),
        ("notify_callback_url", url("http://127.0.0.1/x")),
        ("notify_callback_url", url("http://169.254.169.254/x")),
        ("notify_callback_url", url("http://[fd00::1]/x")),
        ("notify_callback_url", url("https:///x")),
        ("notify_event_subscription", sub(json!(["RECORD_PAUSED"]))),
        ("notify_event_subscription", sub(json!([]))),
        ("notify_event_subscription", sub(json!("RECORD_OVER"))),
        ("sign_type", with(json!({"sign_type": "SHA1"}))),
        ("key", key("too-short")),
        ("key", key(&format!("{KEY}x"))),
        ("key", key("Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4!")),
        ("key", with(json!({"key": 5}))),
    ];
    for (field, request) in &cases {
        let (status, err) = json(
            server
                .signed(&c, Method::POST, "/v1/p1/record/callbacks", Some(request))
                .await,
        )
        .await;
        assert_eq!(status, 400, "{request}: {err}");
        assert_eq!(err["error_code"], "LIVE.100011001");
        let msg = err["error_msg"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field}: ")), "{request}: {msg}");
    }
    let (_, listed) = json(
        server
            .signed(&c, Method::GET, "/v1/p1/record/callbacks", None)
            .await,
    )
    .await;
    assert_eq!(listed["total"], 0);
}

#[tokio::test]
async fn private_targets_pass_when_the_operator_allows_them() {
    let server = TestServer::start_with(|s| s.allow_private_targets = true).await;
    let c = server.credentials("p1").await;
    let request = body(
        json!({"publish_domain": "d.com", "app": "a", "notify_callback_url": "http://127.0.0.1:9000/cb"}),
    );
    let (status, _) = json(
        server
            .signed(&c, Method::POST, "/v1/p1/record/callbacks", Some(&request))
            .await,
    )
    .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn one_config_per_domain_and_app() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let path = "/v1/p1/record/callbacks";
    let live = body(json!({"publish_domain": "d.com", "app": "live"}));
    assert_eq!(
        server
            .signed(&c, Method::POST, path, Some(&live))
            .await
            .status(),
        201
    );
    let (status, err) = json(server.signed(&c, Method::POST, path, Some(&live)).await).await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (400, Some("LIVE.100011001"))
    );
    assert!(
        err["error_msg"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );
    // Domains compare case-insensitively.
    let shouted = body(json!({"publish_domain": "D.COM", "app": "live"}));
    assert_eq!(
        server
            .signed(&c, Method::POST, path, Some(&shouted))
            .await
            .status(),
        400
    );
    let (_, other) = json(
        server
            .signed(
                &c,
                Method::POST,
                path,
                Some(&body(json!({"publish_domain": "d.com", "app": "*"}))),
            )
            .await,
    )
    .await;
    let (status, _) = json(
        server
            .signed(
                &c,
                Method::PUT,
                &format!("{path}/{}", other["id"].as_str().unwrap()),
                Some(&live),
            )
            .await,
    )
    .await;
    assert_eq!(status, 400, "moving a config onto another's domain and app");
}

#[tokio::test]
async fn list_filters_and_pages() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let path = "/v1/p1/record/callbacks";
    for (domain, app) in [
        ("a.com", "live"),
        ("a.com", "*"),
        ("b.com", "live"),
        ("a.com", "vod"),
    ] {
        let request = body(json!({"publish_domain": domain, "app": app}));
        assert_eq!(
            server
                .signed(&c, Method::POST, path, Some(&request))
                .await
                .status(),
            201
        );
    }
    let ids = |v: &Value| -> Vec<String> {
        v["callback_config"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}/{}",
                    c["publish_domain"].as_str().unwrap(),
                    c["app"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (_, all) = json(server.signed(&c, Method::GET, path, None).await).await;
    assert_eq!(
        ids(&all),
        ["a.com/live", "a.com/*", "b.com/live", "a.com/vod"]
    );
    let (_, page) = json(
        server
            .signed(&c, Method::GET, &format!("{path}?offset=1&limit=2"), None)
            .await,
    )
    .await;
    assert_eq!(
        (page["total"].as_u64(), ids(&page)),
        (Some(4), vec!["a.com/*".to_owned(), "b.com/live".to_owned()])
    );
    let (_, by_domain) = json(
        server
            .signed(
                &c,
                Method::GET,
                &format!("{path}?publish_domain=a.com"),
                None,
            )
            .await,
    )
    .await;
    assert_eq!(by_domain["total"], 3);
    let (_, by_both) = json(
        server
            .signed(
                &c,
                Method::GET,
                &format!("{path}?publish_domain=a.com&app=%2A"),
                None,
            )
            .await,
    )
    .await;
    assert_eq!(ids(&by_both), ["a.com/*"]);
    let (_, beyond) = json(
        server
            .signed(&c, Method::GET, &format!("{path}?offset=10"), None)
            .await,
    )
    .await;
    assert_eq!(beyond, json!({"total": 4, "callback_config": []}));
    // SPEC §1's query as written: empty filters are no filters.
    let (_, unfiltered) = json(
        server
            .signed(
                &c,
                Method::GET,
                &format!("{path}?publish_domain=&app=&offset=0&limit=10"),
                None,
            )
            .await,
    )
    .await;
    assert_eq!(unfiltered["total"], 4);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("offset=-1", "offset"),
        ("limit=ten", "limit"),
        // Empty is not an integer (an empty filter, though, is no filter: above).
        ("offset=", "offset"),
        ("publish_domain=&app=&limit=", "limit"),
    ] {
        let (status, err) = json(
            server
                .signed(&c, Method::GET, &format!("{path}?{query}"), None)
                .await,
        )
        .await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (400, Some("LIVE.100011001")),
            "{query}"
        );
        assert!(
            err["error_msg"].as_str().unwrap().starts_with(field),
            "{query}: {err}"
        );
    }
}

#[tokio::test]
async fn the_key_is_never_returned() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let path = "/v1/p1/record/callbacks";
    let request = body(json!({"publish_domain": "d.com", "app": "a", "key": KEY}));
    let created = server
        .signed(&c, Method::POST, path, Some(&request))
        .await
        .text()
        .await
        .unwrap();
    let id: Value = serde_json::from_str(&created).unwrap();
    let item = format!("{path}/{}", id["id"].as_str().unwrap());
    let mut seen = vec![created];
    seen.push(
        server
            .signed(&c, Method::GET, path, None)
            .await
            .text()
            .await
            .unwrap(),
    );
    seen.push(
        server
            .signed(&c, Method::GET, &item, None)
            .await
            .text()
            .await
            .unwrap(),
    );
    seen.push(
        server
            .signed(&c, Method::PUT, &item, Some(&request))
            .await
            .text()
            .await
            .unwrap(),
    );
    seen.push(
        server
            .signed(&c, Method::POST, path, Some(&request))
            .await
            .text()
            .await
            .unwrap(),
    );
    for text in seen {
        assert!(!text.contains(KEY), "{text}");
    }
}

#[tokio::test]
async fn every_answer_has_a_request_id() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let host = herald_api::request_id::hostname();
    let responses = vec![
        server
            .signed(&c, Method::GET, "/v1/p1/record/callbacks", None)
            .await,
        server
            .signed(&c, Method::GET, "/v1/p1/record/callbacks/nope", None)
            .await,
        server
            .signed(&c, Method::POST, "/v1/p1/record/callbacks", Some("{}"))
            .await,
        server
            .http
            .get(format!("{}/v1/p1/record/callbacks", server.base))
            .send()
            .await
            .unwrap(),
        server
            .http
            .get(format!("{}/no/such/route", server.base))
            .send()
            .await
            .unwrap(),
        server
            .http
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap(),
        // A client's own id is replaced: every id names the node that answered.
        server
            .http
            .get(format!("{}/healthz", server.base))
            .header("x-request-id", "mine")
            .send()
            .await
            .unwrap(),
    ];
    for response in responses {
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let (uuid, rest) = id.split_at(36);
        assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{id}");
        let (ms, hostname) = rest[1..].split_once('-').unwrap();
        assert!(
            ms.len() == 13 && ms.bytes().all(|b| b.is_ascii_digit()),
            "{id}"
        );
        assert_eq!(hostname, host);
    }
}

#[tokio::test]
async fn operations_endpoints() {
    let server = TestServer::start().await;
    let get = |path: &str| server.http.get(format!("{}{path}", server.base)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let (status, ready) = json(get("/readyz").await.unwrap()).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    let (status, doc) = json(get("/openapi.json").await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for method in ["post", "get"] {
        assert!(
            paths["/v1/{project_id}/record/callbacks"]
                .get(method)
                .is_some()
        );
    }
    for method in ["get", "put", "delete"] {
        assert!(
            paths["/v1/{project_id}/record/callbacks/{id}"]
                .get(method)
                .is_some()
        );
    }
    for (path, method) in [
        ("/v1/{project_id}/record/events", "post"),
        ("/v1/{project_id}/record/deliveries", "get"),
        ("/v1/{project_id}/record/deliveries/{id}/retry", "post"),
        ("/metrics", "get"),
    ] {
        assert!(paths[path].get(method).is_some(), "{method} {path}");
    }
    assert!(doc["components"]["securitySchemes"].get("aksk").is_some());
    let (status, err) = json(get("/nope").await.unwrap()).await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (404, Some("APIGW.0101"))
    );
    let patch = server
        .http
        .patch(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 405);
}

#[tokio::test]
async fn internal_errors_carry_a_code_and_no_details() {
    let server = TestServer::start().await;
    let c = server.credentials("p1").await;
    let request = body(json!({"publish_domain": "d.com", "app": "a"}));
    let (_, created) = json(
        server
            .signed(&c, Method::POST, "/v1/p1/record/callbacks", Some(&request))
            .await,
    )
    .await;
    // Corrupt the row behind Herald's back: reading it back must fail cleanly.
    server
        .execute_behind_herald("UPDATE live_callback_configs SET publish_domain = 'not a domain'")
        .await;
    let item = format!(
        "/v1/p1/record/callbacks/{}",
        created["id"].as_str().unwrap()
    );
    let (status, err) = json(server.signed(&c, Method::GET, &item, None).await).await;
    assert_eq!(status, 500);
    assert_eq!(
        err,
        json!({"error_code": "LIVE.100011500", "error_msg": "internal error"})
    );
}
