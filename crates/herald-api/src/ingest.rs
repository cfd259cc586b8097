//! The ingest API (SPEC §4): recording engines report events here.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use herald_core::event::EventId;
use herald_core::event::live::parse_live_ingest;
use herald_store::Accepted;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};

/// The answer for one accepted event; a repeated `event_id` gets the first answer again.
#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedEvent {
    event_id: String,
    /// How many callbacks the event will cause (0 when no config matches).
    deliveries: u32,
}

/// The answer for a batch: each event's answer, in order, and their total deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedBatch {
    events: Vec<AcceptedEvent>,
    deliveries: u32,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum IngestAnswer {
    One(AcceptedEvent),
    Batch(AcceptedBatch),
}

/// The 202's body: the one event's answer, or the batch's answers and their total.
pub fn answer(accepted: Vec<Accepted>, is_batch: bool) -> Result<IngestAnswer, ApiError> {
    let mut answers: Vec<AcceptedEvent> = accepted
        .into_iter()
        .map(|a| AcceptedEvent {
            event_id: a.event_id,
            deliveries: a.deliveries,
        })
        .collect();
    if is_batch {
        Ok(IngestAnswer::Batch(AcceptedBatch {
            deliveries: answers.iter().map(|a| a.deliveries).sum(),
            events: answers,
        }))
    } else {
        let one = answers
            .pop()
            .ok_or_else(|| ApiError::internal("the store answered no event"))?;
        Ok(IngestAnswer::One(one))
    }
}

/// Report a Live recording event, or `{"events": [...]}` with up to 1000.
///
/// The fields are those of the Live notification (seed 001, Table 2) without
/// `project_id`, `auth_sign` and `auth_timestamp`, plus an optional `event_id`
/// (idempotency key). The 202 is sent only once the events and their deliveries are
/// durable; a 400 names the bad field and stores nothing.
#[utoipa::path(
    post, path = "/v1/{project_id}/record/events", tag = "ingest",
    params(("project_id" = String, Path)),
    request_body(content = serde_json::Value, description = "One event, or {\"events\": [...]}"),
    responses(
        (status = 202, body = IngestAnswer),
        (status = 400, body = ErrorBody, description = "LIVE.100011001: a field broke a rule"),
        (status = 401, body = ErrorBody),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn ingest_live(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<IngestAnswer>), ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let (events, is_batch) = parse_live_ingest(&body)?;
    let events: Vec<_> = events
        .into_iter()
        .map(|e| (e.event_id.clone().unwrap_or_else(EventId::generate), e))
        .collect();
    let accepted = state
        .store
        .ingest_live(&project_id, &events, OffsetDateTime::now_utc())
        .await?;
    // After the commit: the worker looks at the queue now instead of at its next poll.
    state.wake.notify_one();
    metrics::counter!("herald_events_accepted_total", "flavour" => "live")
        .increment(events.len() as u64);
    let answer = answer(accepted, is_batch)?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}
