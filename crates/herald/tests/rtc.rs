//! The RTC flavour end to end (SPEC §2, §4, §5, RTC-SIGNATURE.md): apps, the record
//! callback, RTC events, and `X-Rtc-*` signed callbacks to a real receiver.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::TestServer;
use common::receiver::{Received, Receiver};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const KEY: &str = "8923ab8c2dcef4538923ab8c2dcef4538923ab8c";
const WAIT: Duration = Duration::from_secs(10);

async fn send(
    server: &TestServer,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server
        .http
        .request(method, format!("{}{path}", server.base))
        .header("x-auth-token", token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    common::json(request.send().await.unwrap()).await
}

async fn new_app(server: &TestServer, token: &str, name: &str) -> String {
    let (status, created) = send(
        server,
        token,
        reqwest::Method::POST,
        "/v2/apps",
        Some(json!({"app_name": name})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    created["app_id"].as_str().unwrap().to_owned()
}

fn is_millis_utc(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.'
}

#[tokio::test]
async fn apps_and_their_record_callback() {
    let server = TestServer::start().await;
    let token = server.token("p1").await;
    use reqwest::Method as M;
    let id = new_app(&server, &token, "my app").await;
    assert!(
        id.len() == 24
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id}"
    );
    let (status, app) = send(&server, &token, M::GET, &format!("/v2/apps/{id}"), None).await;
    assert_eq!(
        (
            status,
            app["app_name"].as_str(),
            app["state"]["state"].as_str()
        ),
        (200, Some("my app"), Some("ACTIVATION"))
    );
    assert!(is_millis_utc(&app["create_time"]), "{app}");
    new_app(&server, &token, "second").await;
    let (_, list) = send(&server, &token, M::GET, "/v2/apps?offset=1&limit=1", None).await;
    assert_eq!(
        (list["count"].as_u64(), list["apps"][0]["app_name"].as_str()),
        (Some(2), Some("second"))
    );

    let path = format!("/v2/apps/{id}/record-callback");
    let (status, before) = send(&server, &token, M::GET, &path, None).await;
    assert_eq!(
        (status, before["record_callback"]["url"].as_str()),
        (200, Some(""))
    );
    let (status, set) = send(
        &server,
        &token,
        M::PUT,
        &path,
        Some(json!({"url": "https://cb.example.com/rtc", "auth_key": KEY})),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["app_id"], id.as_str());
    let callback = &set["record_callback"];
    assert_eq!(
        (callback["url"].as_str(), callback["auth_key"].as_str()),
        (Some("https://cb.example.com/rtc"), Some(KEY))
    );
    assert_eq!(
        callback["notify_event_subscription"],
        json!([
            "RECORD_NEW_FILE_START",
            "RECORD_FILE_COMPLETE",
            "CLOUD_RECORD_SERVER_OVER"
        ])
    );
    assert!(is_millis_utc(&callback["update_time"]), "{set}");
    let (_, shown) = send(&server, &token, M::GET, &path, None).await;
    assert_eq!(shown, set);
    let (status, removed) = send(&server, &token, M::PUT, &path, Some(json!({"url": ""}))).await;
    assert_eq!(
        (status, removed["record_callback"]["url"].as_str()),
        (200, Some(""))
    );

    let (status, _) = send(&server, &token, M::DELETE, &format!("/v2/apps/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, err) = send(&server, &token, M::GET, &format!("/v2/apps/{id}"), None).await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (404, Some("RTC.00001003"))
    );
}

#[tokio::test]
async fn bad_input_and_other_projects_apps_are_refused_with_rtc_codes() {
    let server = TestServer::start().await;
    let token = server.token("p1").await;
    let other = server.token("p2").await;
    use reqwest::Method as M;
    let id = new_app(&server, &token, "mine").await;
    let path = format!("/v2/apps/{id}/record-callback");
    for (body, field) in [
        (json!({}), "url"),
        (json!({"url": "cb.example.com/x"}), "url"),
        (json!({"url": "ftp://cb.example.com/x"}), "url"),
        (json!({"url": "http://127.0.0.1/x"}), "url"),
        (
            json!({"url": "https://cb.example.com/x", "auth_key": "short"}),
            "auth_key",
        ),
        (
            json!({"url": "https://cb.example.com/x", "auth_key": "x".repeat(65)}),
            "auth_key",
        ),
    ] {
        let (status, err) = send(&server, &token, M::PUT, &path, Some(body.clone())).await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (400, Some("RTC.00001003")),
            "{body}"
        );
        assert!(
            err["error_msg"]
                .as_str()
                .unwrap()
                .starts_with(&format!("InvalidParameterValue: {field}: ")),
            "{err}"
        );
    }
    for (body, field) in [
        (json!({}), "app_name"),
        (json!({"app_name": ""}), "app_name"),
        (json!({"app_name": "x".repeat(65)}), "app_name"),
    ] {
        let (status, err) = send(&server, &token, M::POST, "/v2/apps", Some(body)).await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (400, Some("RTC.00001003"))
        );
        assert!(err["error_msg"].as_str().unwrap().contains(field));
    }
    for query in [
        "limit=0",
        "limit=101",
        "offset=-1",
        "offset=",
        "state=&limit=",
    ] {
        let (status, err) = send(&server, &token, M::GET, &format!("/v2/apps?{query}"), None).await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (400, Some("RTC.00001003")),
            "{query}"
        );
    }
    // Another project's app is a 404, for every operation, and absent from its list.
    for (method, p, body) in [
        (M::GET, format!("/v2/apps/{id}"), None),
        (M::GET, path.clone(), None),
        (
            M::PUT,
            path.clone(),
            Some(json!({"url": "https://cb.example.com/x"})),
        ),
        (
            M::POST,
            format!("/v2/apps/{id}/record/events"),
            Some(json!({"event_type": "RECORD_FILE_COMPLETE", "stream_name": "s"})),
        ),
        (M::DELETE, format!("/v2/apps/{id}"), None),
        (M::GET, "/v2/apps/000000000000000000000000".to_owned(), None),
        (M::GET, "/v2/apps/not-an-app-id".to_owned(), None),
    ] {
        let (status, err) = send(&server, &other, method.clone(), &p, body).await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (404, Some("RTC.00001003")),
            "{method} {p}"
        );
    }
    let (_, list) = send(&server, &other, M::GET, "/v2/apps", None).await;
    assert_eq!(list["count"], 0);
    let (status, _) = send(&server, &token, M::GET, &format!("/v2/apps/{id}"), None).await;
    assert_eq!(status, 200, "the owner still has it");
}

/// RTC-SIGNATURE.md, written again here: hex HMAC-SHA256(auth_key, rand + timestamp + raw body).
fn expected_signature(r: &Received) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(r.header("x-rtc-rand").as_bytes());
    mac.update(r.header("x-rtc-timestamp").as_bytes());
    mac.update(&r.body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn rtc_callbacks_are_signed_over_the_raw_body_and_resigned_on_retry() {
    let server = TestServer::start_with(|s| {
        s.allow_private_targets = true;
        s.retry_schedule = common::schedule("0s,1100ms");
    })
    .await;
    let token = server.token("p1").await;
    use reqwest::Method as M;
    // Fails the first attempt at each event, then succeeds.
    let receiver = Receiver::scripted(Arc::new(|r: &Received, _n: usize| {
        let first = r.header("herald-delivery-attempt") == "1";
        (
            if first {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            },
            Duration::ZERO,
        )
    }))
    .await;
    let plain = Receiver::ok().await;
    let id = new_app(&server, &token, "signed").await;
    let unsigned_id = new_app(&server, &token, "unsigned").await;
    let set = |url: String, key: Option<&str>| json!({"url": url, "auth_key": key});
    send(
        &server,
        &token,
        M::PUT,
        &format!("/v2/apps/{id}/record-callback"),
        Some(set(receiver.url(), Some(KEY))),
    )
    .await;
    send(
        &server,
        &token,
        M::PUT,
        &format!("/v2/apps/{unsigned_id}/record-callback"),
        Some(set(plain.url(), None)),
    )
    .await;

    let event = json!({"event_id": "rtc-1", "event_type": "RECORD_FILE_COMPLETE", "stream_name": "mystream", "room_id": "room01",
        "record_format": "HLS", "download_url": "https://obs.example.com/a.m3u8", "file_size": 26254952, "record_duration": 65,
        "width": 1280, "height": 720, "start_time": "2021-04-28T08:56:57Z", "end_time": "2021-04-28T08:58:02Z", "job_id": "job-1"});
    let (status, answer) = send(
        &server,
        &token,
        M::POST,
        &format!("/v2/apps/{id}/record/events"),
        Some(event.clone()),
    )
    .await;
    assert_eq!(
        (status, answer),
        (202, json!({"event_id": "rtc-1", "deliveries": 1}))
    );
    let (status, _) = send(
        &server,
        &token,
        M::POST,
        &format!("/v2/apps/{unsigned_id}/record/events"),
        Some(json!({"event_type": "CLOUD_RECORD_SERVER_OVER", "stream_name": "s"})),
    )
    .await;
    assert_eq!(status, 202);

    let got = receiver.wait_for(2, WAIT).await;
    for (r, attempt) in got.iter().zip(["1", "2"]) {
        assert_eq!(r.header("herald-delivery-attempt"), attempt);
        assert_eq!(r.header("herald-event-id"), "rtc-1");
        assert_eq!(r.header("x-rtc-signature"), expected_signature(r));
        assert!(
            r.header("x-rtc-rand").parse::<u32>().is_ok(),
            "{}",
            r.header("x-rtc-rand")
        );
        let ts: i64 = r.header("x-rtc-timestamp").parse().unwrap();
        assert!((ts - time::OffsetDateTime::now_utc().unix_timestamp()).abs() <= 60);
        let body = r.json();
        assert_eq!(body["app_id"], id.as_str());
        for (name, value) in event
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "event_id")
        {
            assert_eq!(&body[name], value, "{name}");
        }
        assert!(
            body.get("event_id").is_none()
                && body.as_object().unwrap().values().all(|v| !v.is_null())
        );
    }
    assert_ne!(
        (
            got[0].header("x-rtc-timestamp"),
            got[0].header("x-rtc-signature")
        ),
        (
            got[1].header("x-rtc-timestamp"),
            got[1].header("x-rtc-signature")
        ),
        "the retry was not signed afresh"
    );
    let plain_got = plain.wait_for(1, WAIT).await;
    for name in ["x-rtc-rand", "x-rtc-timestamp", "x-rtc-signature"] {
        assert!(
            plain_got[0].headers.get(name).is_none(),
            "{name} sent without an auth_key"
        );
    }
    // RTC deliveries share the project's delivery log.
    let (_, log) = send(
        &server,
        &token,
        M::GET,
        "/v1/p1/record/deliveries?event_id=rtc-1",
        None,
    )
    .await;
    assert_eq!(
        (
            log["total"].as_u64(),
            log["deliveries"][0]["event_type"].as_str()
        ),
        (Some(1), Some("RECORD_FILE_COMPLETE"))
    );
}

#[tokio::test]
async fn rtc_ingest_refuses_live_only_types_and_unknown_apps() {
    let server = TestServer::start().await;
    let token = server.token("p1").await;
    use reqwest::Method as M;
    let id = new_app(&server, &token, "app").await;
    let events = format!("/v2/apps/{id}/record/events");
    for (body, field) in [
        (
            json!({"event_type": "RECORD_OVER", "stream_name": "s"}),
            "event_type",
        ),
        (
            json!({"event_type": "RECORD_START", "stream_name": "s"}),
            "event_type",
        ),
        (json!({"event_type": "RECORD_FILE_COMPLETE"}), "stream_name"),
        (
            json!({"event_type": "RECORD_FILE_COMPLETE", "stream_name": "s", "width": "1280"}),
            "width",
        ),
        (
            json!({"events": [{"event_type": "RECORD_FILE_COMPLETE", "stream_name": "s"}, {"stream_name": "s"}]}),
            "events[1].event_type",
        ),
    ] {
        let (status, err) = send(&server, &token, M::POST, &events, Some(body.clone())).await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (400, Some("RTC.00001003")),
            "{body}"
        );
        assert!(
            err["error_msg"]
                .as_str()
                .unwrap()
                .starts_with(&format!("InvalidParameterValue: {field}: ")),
            "{err}"
        );
    }
    // Without a record callback an event is accepted and goes nowhere.
    let (status, answer) = send(
        &server,
        &token,
        M::POST,
        &events,
        Some(json!({"event_type": "RECORD_NEW_FILE_START", "stream_name": "s"})),
    )
    .await;
    assert_eq!((status, answer["deliveries"].as_u64()), (202, Some(0)));
    let (status, err) = send(
        &server,
        &token,
        M::POST,
        "/v2/apps/0123456789abcdef01234567/record/events",
        Some(json!({"event_type": "RECORD_NEW_FILE_START", "stream_name": "s"})),
    )
    .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (404, Some("RTC.00001003"))
    );
}

#[tokio::test]
async fn deleting_an_app_cancels_its_waiting_callbacks() {
    let server = TestServer::start_with(|s| s.allow_private_targets = true).await;
    let token = server.token("p1").await;
    use reqwest::Method as M;
    let receiver = Receiver::scripted(Arc::new(|_r: &Received, _n: usize| {
        (StatusCode::OK, Duration::from_millis(500))
    }))
    .await;
    let id = new_app(&server, &token, "app").await;
    send(
        &server,
        &token,
        M::PUT,
        &format!("/v2/apps/{id}/record-callback"),
        Some(json!({"url": receiver.url()})),
    )
    .await;
    let event =
        |n: &str| json!({"event_id": n, "event_type": "RECORD_FILE_COMPLETE", "stream_name": "s"});
    send(
        &server,
        &token,
        M::POST,
        &format!("/v2/apps/{id}/record/events"),
        Some(json!({"events": [event("a"), event("b")]})),
    )
    .await;
    receiver.wait_for(1, WAIT).await;
    let (status, _) = send(&server, &token, M::DELETE, &format!("/v2/apps/{id}"), None).await;
    assert_eq!(status, 204);
    let (_, log) = send(
        &server,
        &token,
        M::GET,
        "/v1/p1/record/deliveries?status=cancelled",
        None,
    )
    .await;
    assert_eq!(
        (
            log["total"].as_u64(),
            log["deliveries"][0]["event_id"].as_str()
        ),
        (Some(1), Some("b"))
    );
}

/// SPEC §2: a record callback is sent all three event types by default, or only those its
/// `notify_event_subscription` names; the others are accepted with no delivery. A bad
/// subscription is a 400 naming the field.
#[tokio::test]
async fn a_record_callback_is_sent_only_the_types_it_subscribes_to() {
    use reqwest::Method as M;
    let server = TestServer::start_with(|s| s.allow_private_targets = true).await;
    let token = server.token("p1").await;
    let receiver = Receiver::ok().await;
    let id = new_app(&server, &token, "chosen").await;
    let path = format!("/v2/apps/{id}/record-callback");
    let (status, shown) = send(&server, &token, M::GET, &path, None).await;
    assert_eq!(
        (
            status,
            &shown["record_callback"]["notify_event_subscription"]
        ),
        (
            200,
            &json!([
                "RECORD_NEW_FILE_START",
                "RECORD_FILE_COMPLETE",
                "CLOUD_RECORD_SERVER_OVER"
            ])
        )
    );
    for (subscription, field) in [
        (json!([]), "notify_event_subscription"),
        (json!(["RECORD_OVER"]), "notify_event_subscription"),
    ] {
        let body = json!({"url": receiver.url(), "notify_event_subscription": subscription});
        let (status, refused) = send(&server, &token, M::PUT, &path, Some(body)).await;
        assert_eq!(status, 400, "{refused}");
        assert!(
            refused["error_msg"].as_str().unwrap().contains(field),
            "{refused}"
        );
    }
    let body =
        json!({"url": receiver.url(), "notify_event_subscription": ["RECORD_FILE_COMPLETE"]});
    let (status, set) = send(&server, &token, M::PUT, &path, Some(body)).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        set["record_callback"]["notify_event_subscription"],
        json!(["RECORD_FILE_COMPLETE"])
    );
    let (_, shown) = send(&server, &token, M::GET, &path, None).await;
    assert_eq!(
        shown["record_callback"]["notify_event_subscription"],
        json!(["RECORD_FILE_COMPLETE"])
    );
    let events = json!({"events": [
        {"event_id": "skipped", "event_type": "RECORD_NEW_FILE_START", "stream_name": "s"},
        {"event_id": "sent", "event_type": "RECORD_FILE_COMPLETE", "stream_name": "s"},
    ]});
    let (status, answer) = send(
        &server,
        &token,
        M::POST,
        &format!("/v2/apps/{id}/record/events"),
        Some(events),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["deliveries"], 1, "{answer}");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("herald-event-id"), "sent");
    // Setting the callback again without a subscription subscribes it to all three.
    let (_, set) = send(
        &server,
        &token,
        M::PUT,
        &path,
        Some(json!({"url": receiver.url()})),
    )
    .await;
    assert_eq!(
        set["record_callback"]["notify_event_subscription"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}
