//! `herald listen`: a local receiver for trying callback configs, in the spirit of
//! `stripe listen`. It prints each callback readably (or as one JSON line), says whether
//! its signature verifies, and answers with the status it was told to.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use herald_verify::{RtcHeaders, RtcVerifier, SignType, verify_live};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::net::TcpListener;

pub struct ListenOptions {
    pub addr: SocketAddr,
    /// The Live config's key or the RTC app's auth key; without it nothing is verified.
    pub key: Option<String>,
    pub sign_type: SignType,
    /// Verify `X-Rtc-*` headers instead of Live's `auth_sign`.
    pub rtc: bool,
    /// The status every callback gets, e.g. 500 to watch Herald retry.
    pub status: StatusCode,
    pub json: bool,
}

struct Listener {
    options: ListenOptions,
    /// Remembers each callback it verified within the tolerance window by its signature
    /// (which covers rand, timestamp and body), so the same signed callback sent again is
    /// flagged as a replay while two callbacks that share an `X-Rtc-Rand` by chance both pass.
    rtc: Option<RtcVerifier>,
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Listener {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), String> {
        let Some(key) = &self.options.key else {
            return Err("not checked: start herald listen with --key".into());
        };
        match &self.rtc {
            Some(verifier) => {
                let headers = RtcHeaders {
                    rand: header(headers, "x-rtc-rand"),
                    timestamp: header(headers, "x-rtc-timestamp"),
                    signature: header(headers, "x-rtc-signature"),
                };
                verifier
                    .verify(headers, body, now)
                    .map_err(|e| e.to_string())
            }
            None => verify_live(body, key, self.options.sign_type, now)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}

/// One line a person can read: what happened to which recording, and the verdict.
fn describe(body: &Value, event_id: &str, attempt: &str, verdict: &Result<(), String>) -> String {
    let text = |name: &str| body.get(name).and_then(Value::as_str);
    let mut line = format!(
        "{} {}",
        text("event_type").unwrap_or("(no event_type)"),
        event_id
    );
    if let Some(stream) = text("stream").or_else(|| text("stream_name")) {
        line.push_str(&format!(" stream={stream}"));
    }
    if let Some(file) = text("download_url").or_else(|| text("obs_object")) {
        line.push_str(&format!(" file={file}"));
    }
    if let Some(size) = body.get("file_size").and_then(Value::as_u64) {
        line.push_str(&format!(" size={size}B"));
    }
    if let Some(secs) = body.get("record_duration").and_then(Value::as_u64) {
        line.push_str(&format!(" duration={secs}s"));
    }
    if let (Some(w), Some(h)) = (
        body.get("width").and_then(Value::as_u64),
        body.get("height").and_then(Value::as_u64),
    ) {
        line.push_str(&format!(" {w}x{h}"));
    }
    line.push_str(&format!(" attempt={attempt}"));
    match verdict {
        Ok(()) => line.push_str("  signature verified"),
        Err(problem) => line.push_str(&format!("  NOT VERIFIED: {problem}")),
    }
    line
}

/// `line` with every control character written as an escape (`\n`, `\u{1b}`): what a
/// callback says is printed on one line, and cannot move the cursor, colour the terminal
/// or start a line of its own that looks like Herald's.
fn escape_controls(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

async fn receive(
    State(listener): State<Arc<Listener>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = OffsetDateTime::now_utc();
    let verdict = listener.verify(&headers, &body, now.unix_timestamp());
    let parsed: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let event_id = header(&headers, "herald-event-id").unwrap_or("-");
    let attempt = header(&headers, "herald-delivery-attempt").unwrap_or("-");
    if listener.options.json {
        let line = json!({
            "received_at": herald_core::timefmt::utc_millis(now),
            "event_id": event_id,
            // A number, as the header carries it; null when the header is missing or odd.
            "attempt": attempt.parse::<u32>().ok(),
            "event_type": parsed.get("event_type"),
            "body": parsed,
            "verified": verdict.is_ok(),
            "problem": verdict.as_ref().err(),
        });
        println!("{line}");
    } else {
        println!(
            "[{}] {}",
            herald_core::timefmt::utc_seconds(now),
            escape_controls(&describe(&parsed, event_id, attempt, &verdict))
        );
    }
    listener.options.status
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(options: ListenOptions) -> anyhow::Result<()> {
    let socket = TcpListener::bind(options.addr)
        .await
        .with_context(|| format!("binding {}", options.addr))?;
    let addr = socket.local_addr()?;
    let mode = if options.rtc {
        "RTC (X-Rtc-* headers)"
    } else {
        "Live (auth_sign)"
    };
    let rtc = options
        .rtc
        .then(|| RtcVerifier::new(options.key.as_deref().unwrap_or_default()));
    eprintln!(
        "herald listen: {mode} callbacks, answering {}",
        options.status.as_u16()
    );
    // On stderr: stdout carries only callbacks, so `herald listen --json | jq` works.
    eprintln!("listening on http://{addr}");
    let app = axum::Router::new()
        .fallback(axum::routing::post(receive))
        .with_state(Arc::new(Listener { options, rtc }));
    axum::serve(socket, app)
        .with_graceful_shutdown(async {
            crate::app::shutdown_signal().await;
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A callback's stream name with a newline once printed a forged "signature verified"
    /// line of its own; an escape could recolour or erase the real one.
    #[test]
    fn a_callbacks_text_stays_on_its_line() {
        let body = json!({"event_type": "RECORD_OVER",
            "stream": "cam\n[2026-12-06T00:00:00Z] RECORD_OVER x attempt=1  signature verified\u{1b}[2K\r"});
        let line = escape_controls(&describe(&body, "e1", "1", &Err("bad signature".into())));
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.ends_with("NOT VERIFIED: bad signature"), "{line}");
        assert!(line.contains("cam\\n[2026"), "{line}");
    }
}
