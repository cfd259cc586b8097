//! The backend-neutral steps of a delivery's life after acceptance: what an attempt's
//! outcome or a rescue makes of it, and which streams may move on. Backends apply them in
//! their own SQL.

use herald_core::timefmt::unix_ms;

use crate::{AfterAttempt, Completion, DeliveryState};

/// SQL true when the delivery `d`'s config (Live) or app record callback (RTC) still
/// exists; a delivery whose target is gone is cancelled rather than retried. Statements
/// using it name the delivery row `d`.
pub(crate) const TARGET_EXISTS: &str = "(EXISTS (SELECT 1 FROM live_callback_configs c WHERE c.id = d.config_id) \
     OR EXISTS (SELECT 1 FROM rtc_apps a WHERE a.app_id = d.config_id AND a.callback_url IS NOT NULL))";

/// SQL `SET` terms that keep a successful attempt in its delivery row `d`, from the outcome
/// row `b` (`state`, `at`, `status_code`, `latency_ms`, `response_head`); other outcomes
/// leave the columns empty. A success is never written to `delivery_attempts`, which holds
/// the failed and lost attempts: a first-try success is one change of one row.
pub(crate) fn success_from_b() -> String {
    let succeeded = DeliveryState::Succeeded;
    [
        ("at_ms", "at"),
        ("status_code", "status_code"),
        ("latency_ms", "latency_ms"),
        ("response_head", "response_head"),
    ]
    .map(|(column, value)| {
        format!("success_{column} = CASE WHEN b.state = '{succeeded}' THEN b.{value} END")
    })
    .join(", ")
}

/// SQL: the state a rescued delivery `d` moves to. Cancelled when its target is gone; dead
/// when the attempt its worker died in (number `attempts`, an SQL expression) was its last
/// (`max_attempts` is the parameter that holds the number of attempts), so that a delivery
/// that kills its worker every time is not sent forever; else retried.
pub(crate) fn rescued_state(attempts: &str, max_attempts: &str) -> String {
    let (cancelled, dead, retrying) = (
        DeliveryState::Cancelled,
        DeliveryState::Dead,
        DeliveryState::Retrying,
    );
    format!(
        "CASE WHEN NOT {TARGET_EXISTS} THEN '{cancelled}' WHEN {attempts} >= {max_attempts} THEN '{dead}' \
         ELSE '{retrying}' END"
    )
}

/// `(config_id, stream)` of the rows an update returned whose new `state` finished them
/// (anything but `retrying`): the streams whose next delivery may go out now. Generic over
/// the backend's row type. (The embedded store finds them in SQL instead.)
pub(crate) fn finished_streams<R: sqlx::Row>(
    rows: &[R],
) -> Result<Vec<(String, String)>, sqlx::Error>
where
    for<'r> &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    let mut finished = Vec::new();
    for row in rows {
        let state = DeliveryState::parse(row.try_get::<&str, _>("state")?)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        if state != DeliveryState::Retrying {
            finished.push((row.try_get("config_id")?, row.try_get("stream")?));
        }
    }
    Ok(finished)
}

/// An attempt's outcome as the queue stores it: the state it moves the delivery to, and
/// when the delivery is next due (for a finished one, when it finished). `None` for a
/// follower handed back unsent, which moves nothing.
pub(crate) fn next_state(completion: &Completion) -> Option<(DeliveryState, i64)> {
    let at_ms = unix_ms(completion.record.at);
    match completion.next {
        AfterAttempt::Succeeded => Some((DeliveryState::Succeeded, at_ms)),
        AfterAttempt::RetryAt(at) => Some((DeliveryState::Retrying, unix_ms(at))),
        AfterAttempt::Dead => Some((DeliveryState::Dead, at_ms)),
        AfterAttempt::NotSent => None,
    }
}

/// The time a batch of outcomes is applied at: the latest of their attempts.
pub(crate) fn batch_time_ms(completions: &[Completion]) -> i64 {
    completions
        .iter()
        .map(|c| unix_ms(c.record.at))
        .max()
        .unwrap_or(0)
}

/// The error an attempt whose lease expired is logged with.
pub(crate) const LEASE_EXPIRED: &str =
    "lease expired: the worker stopped before recording the outcome";
