//! `X-request-id: {uuid}-{unix_ms}-{hostname}` on every answer, errors included (SPEC §1).

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use time::OffsetDateTime;

/// The header as the Live API spells it; HTTP/1 sends names as given, and the RTC
/// spelling `X-request-Id` is the same header to any HTTP client.
pub const REQUEST_ID: &str = "x-request-id";

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

pub fn new_request_id(hostname: &str) -> String {
    let ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    format!("{}-{ms}-{hostname}", uuid::Uuid::new_v4())
}

/// Middleware: makes the id, records it in the request's span, sets it on the answer.
pub async fn set_request_id(
    hostname: std::sync::Arc<str>,
    request: Request,
    next: Next,
) -> Response {
    let id = new_request_id(&hostname);
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
