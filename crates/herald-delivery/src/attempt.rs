//! One delivery attempt, from claimed row to recorded outcome.

use std::time::Instant;

use herald_core::notification::render_live;
use herald_core::notification::render_rtc;
use herald_core::retry::parse_retry_after;
use herald_core::signing::rtc_signature;
use herald_store::{AfterAttempt, AttemptRecord, ClaimedDelivery, Completion, Notification};
use hyper::header::{HeaderMap, HeaderValue};
use time::OffsetDateTime;

use crate::DeliverySettings;
use crate::client::{Answer, Sender, callback_headers};

/// The notification's body, signed for this attempt: Live signatures go in the body,
/// RTC ones in `X-Rtc-*` headers computed over the exact body bytes.
fn signed_body(
    settings: &DeliverySettings,
    delivery: &ClaimedDelivery,
    at: OffsetDateTime,
    headers: &mut HeaderMap,
) -> Vec<u8> {
    match &delivery.notification {
        Notification::Live { event, signing } => {
            let ttl = i64::try_from(settings.signature_ttl.as_secs()).unwrap_or(i64::MAX);
            render_live(
                delivery.project_id.as_str(),
                event,
                signing.as_ref(),
                at.unix_timestamp().saturating_add(ttl),
            )
        }
        Notification::Rtc {
            app_id,
            event,
            auth_key,
        } => {
            let body = render_rtc(app_id, event);
            if let Some(key) = auth_key {
                let sig = rtc_signature(key, rand::random::<u32>(), at.unix_timestamp(), &body);
                for (name, value) in [
                    ("x-rtc-rand", sig.rand),
                    ("x-rtc-timestamp", sig.timestamp),
                    ("x-rtc-signature", sig.signature),
                ] {
                    // Decimal digits and hex: always valid header values.
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.insert(name, value);
                    }
                }
            }
            body
        }
    }
}

/// Renders and signs the notification afresh (a new `auth_timestamp` each attempt),
/// POSTs it, and decides from the answer and the retry schedule what comes next.
pub async fn attempt(
    sender: &Sender,
    settings: &DeliverySettings,
    delivery: &ClaimedDelivery,
    lease_owner: &str,
) -> Completion {
    let at = OffsetDateTime::now_utc();
    let mut headers = callback_headers(&delivery.event_id, delivery.attempt);
    let body = signed_body(settings, delivery, at, &mut headers);
    let started = Instant::now();
    let answer = sender.post(&delivery.url, headers, body).await;
    let elapsed = started.elapsed();
    metrics::histogram!("herald_delivery_attempt_duration_seconds").record(elapsed.as_secs_f64());
    let mut asked = None;
    let (succeeded, status_code, error, response_head, result) = match answer {
        Answer::Response {
            status,
            head,
            retry_after,
        } => {
            asked = retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
            let ok = (200..300).contains(&status);
            let error = (!ok).then(|| format!("HTTP {status}"));
            (
                ok,
                Some(status),
                error,
                Some(head),
                if ok { "success" } else { "http_error" },
            )
        }
        Answer::Failed { error, kind } => (false, None, Some(error), None, kind.metric_label()),
    };
    metrics::counter!("herald_delivery_attempts_total", "result" => result).increment(1);
    let next = if succeeded {
        AfterAttempt::Succeeded
    } else {
        let schedule = &settings.retry_schedule;
        let delay = match asked {
            Some(asked) => schedule.delay_asked_for(delivery.attempt, asked),
            None => schedule.next_delay(delivery.attempt, rand::random::<f64>()),
        };
        match delay {
            Some(delay) => AfterAttempt::RetryAt(OffsetDateTime::now_utc() + delay),
            None => AfterAttempt::Dead,
        }
    };
    tracing::debug!(
        delivery_id = delivery.id, event_id = %delivery.event_id, config_id = %delivery.config_id,
        attempt = delivery.attempt, ?status_code, ?error, ?next, "attempt made"
    );
    Completion {
        delivery_id: delivery.id,
        attempt: delivery.attempt,
        lease_owner: lease_owner.to_owned(),
        record: AttemptRecord {
            at,
            status_code,
            error,
            latency_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            response_head,
        },
        next,
    }
}
