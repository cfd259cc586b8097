//! Herald's verifier against requests signed by the official SDK's `Signer`.
//!
//! The fixture was produced by `tools/gen_signer_vectors.py` (see its docstring for the
//! SDK version and the command); each vector is a request as it went on the wire, with the
//! canonical request and `Authorization` header the SDK computed for it.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use herald_core::sdk_auth::{self, AuthError, Authorization, WireRequest};
use serde_json::Value;
use time::{OffsetDateTime, PrimitiveDateTime, macros::format_description};

fn vectors() -> Vec<Value> {
    let raw = include_str!("fixtures/sdk_signer_vectors.json");
    let doc: Value = serde_json::from_str(raw).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {key}"))
}

fn sdk_time(raw: &str) -> OffsetDateTime {
    PrimitiveDateTime::parse(
        raw,
        format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .unwrap()
    .assume_utc()
}

#[test]
fn every_sdk_signed_request_verifies() {
    let vectors = vectors();
    assert!(vectors.len() >= 20, "fixture has {} vectors", vectors.len());
    for v in &vectors {
        let name = text(v, "name");
        let headers: Vec<(String, String)> = v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h[0].as_str().unwrap().to_ascii_lowercase(),
                    h[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let req = WireRequest {
            method: text(v, "method"),
            raw_path: text(v, "raw_path"),
            raw_query: text(v, "raw_query"),
            headers: &headers,
            body: text(v, "body").as_bytes(),
        };
        let auth = Authorization::parse(text(v, "authorization")).unwrap();
        let date = headers
            .iter()
            .find(|(n, _)| n == "x-sdk-date")
            .unwrap()
            .1
            .clone();
        let outcome = sdk_auth::verify(&req, &auth, text(v, "sk"), sdk_time(&date));
        if v["expect_unsigned_payload"].as_bool() == Some(true) && !req.body.is_empty() {
            assert_eq!(outcome, Err(AuthError::UnsignedPayload), "{name}");
            continue;
        }
        assert_eq!(
            sdk_auth::canonical_request(&req, &auth.signed_headers).unwrap(),
            text(v, "canonical_request"),
            "{name}: canonical request"
        );
        assert_eq!(outcome, Ok(()), "{name}");
        assert_eq!(
            sdk_auth::verify(&req, &auth, "not-the-secret-key", sdk_time(&date)),
            Err(AuthError::SignatureMismatch),
            "{name}: wrong key"
        );
    }
}
