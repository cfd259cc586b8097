//! `X-request-id: {uuid}-{unix_ms}-{hostname}` on every answer, errors included (SPEC §1).
//!
//! tower-http does the plumbing: `SetRequestHeaderLayer::overriding` puts a fresh id on
//! every request (a client's own `X-request-id` is replaced, so every id has the documented
//! form and names the node that answered), the trace span carries it, and
//! `PropagateRequestIdLayer` copies it onto the answer. This module makes the id.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use time::OffsetDateTime;
use tracing::Span;

/// The header as the Live API spells it; HTTP/1 sends names as given, and the RTC
/// spelling `X-request-Id` is the same header to any HTTP client.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The host part of request ids, read once: it names the node that answered.
pub fn hostname() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    // Header values must be visible ASCII; a hostname that is not gets a neutral stand-in.
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) {
        name
    } else {
        "herald".to_owned()
    }
}

/// Makes the ids of one node: give it to `SetRequestHeaderLayer::overriding`.
pub fn make_request_id(hostname: Arc<str>) -> impl Fn(&Request) -> Option<HeaderValue> + Clone {
    move |_| {
        let ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        HeaderValue::from_str(&format!("{}-{ms}-{hostname}", uuid::Uuid::new_v4())).ok()
    }
}

/// The span every request's logs are in: its id, method and path.
pub fn span(request: &Request) -> Span {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path())
}
