//! The ingest API (SPEC §4): recording engines report events here.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use herald_core::event::EventId;
use herald_core::event::live::{LiveEventType, parse_live_ingest};
use herald_store::Accepted;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::openapi;

/// The answer for one accepted event; a repeated `event_id` gets the first answer again.
#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedEvent {
    event_id: String,
    /// How many callbacks the event will cause (0 when no config matches).
    deliveries: u32,
    /// With 0 deliveries, why: e.g. "0 deliveries: no config subscribes to RECORD_START
    /// for push.example.com/live". Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
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

/// A Live ingest body, for the OpenAPI document: one event, or a batch.
/// `herald_core::event::live::parse_live_ingest` parses it; the body is at most 1 MiB.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub enum LiveIngestBody {
    One(Box<LiveEventBody>),
    Batch(LiveEventBatch),
}

/// `{"events": [...]}`: 1 to 1000 events, accepted or refused together.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct LiveEventBatch {
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<LiveEventBody>,
}

/// One Live recording event: the fields of the Live notification (seed 001, Table 2)
/// but `project_id`, `auth_sign` and `auth_timestamp`, which Herald adds, plus
/// `event_id`. A field it does not name is refused; null is a field left out.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct LiveEventBody {
    #[schema(schema_with = event_id)]
    event_id: Option<String>,
    #[schema(schema_with = optional_text)]
    job_id: Option<String>,
    #[schema(schema_with = live_event_type)]
    event_type: String,
    #[schema(schema_with = event_publish_domain)]
    publish_domain: String,
    #[schema(schema_with = routing_key)]
    app: String,
    #[schema(schema_with = routing_key)]
    stream: String,
    #[schema(schema_with = optional_text)]
    record_format: Option<String>,
    #[schema(schema_with = optional_url_text)]
    download_url: Option<String>,
    #[schema(schema_with = optional_text)]
    asset_id: Option<String>,
    #[schema(schema_with = optional_url_text)]
    play_url: Option<String>,
    #[schema(schema_with = count)]
    file_size: Option<u64>,
    #[schema(schema_with = count)]
    record_duration: Option<u64>,
    #[schema(schema_with = optional_text)]
    start_time: Option<String>,
    #[schema(schema_with = optional_text)]
    end_time: Option<String>,
    #[schema(schema_with = count)]
    width: Option<u64>,
    #[schema(schema_with = count)]
    height: Option<u64>,
    #[schema(schema_with = optional_text)]
    obs_location: Option<String>,
    #[schema(schema_with = optional_text)]
    obs_bucket: Option<String>,
    #[schema(schema_with = optional_text)]
    obs_object: Option<String>,
    #[schema(schema_with = optional_text)]
    error_message: Option<String>,
}

fn live_event_type() -> ObjectBuilder {
    openapi::one_of_names(LiveEventType::ALL.map(LiveEventType::as_str))
}

/// `herald_core::event::EventId`.
pub fn event_id() -> ObjectBuilder {
    openapi::nullable_string(
        ObjectBuilder::new()
            .min_length(Some(1))
            .max_length(Some(128))
            .pattern(Some("^[ -~]{1,128}$")),
    )
    .description(Some(
        "The idempotency key: 1 to 128 printable ASCII characters. The same key twice in a \
         project is accepted once; the second answer is the first one again. Left out or \
         null: Herald makes one.",
    ))
}

/// A required text field that routes the event (SPEC §4: at most 255 bytes for
/// `publish_domain`, 256 for the others).
fn required_text(max_bytes: usize) -> ObjectBuilder {
    openapi::text(max_bytes)
        .min_length(Some(1))
        .description(Some(format!(
            "Required, not empty, at most {max_bytes} bytes, no U+0000."
        )))
}

fn event_publish_domain() -> ObjectBuilder {
    required_text(255)
}

/// `app`, `stream`, `stream_name`: names, without control characters.
pub fn routing_key() -> ObjectBuilder {
    required_text(256)
        .pattern(Some(openapi::NAME))
        .description(Some(
            "Required, not empty, at most 256 bytes, no control character (U+0000 to U+001F, \
             U+007F).",
        ))
}

/// A text field without a narrower rule: at most 4096 bytes.
pub fn optional_text() -> ObjectBuilder {
    optional_text_of(4096)
}

/// `download_url`, `play_url`: at most 2048 bytes.
pub fn optional_url_text() -> ObjectBuilder {
    optional_text_of(2048)
}

/// An optional text field of at most `max_bytes` bytes.
pub fn optional_text_of(max_bytes: usize) -> ObjectBuilder {
    openapi::nullable_string(openapi::text(max_bytes))
        .description(Some(format!("At most {max_bytes} bytes, no U+0000.")))
}

/// A size, duration or dimension: a non-negative integer that fits in 64 bits.
pub fn count() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
        .minimum(Some(0))
        .maximum(Some(u64::MAX))
}

/// Counts and logs (at debug) an accepted event that causes no delivery, with why.
pub fn note_unmatched(flavour: &'static str, event_type: &'static str, event_id: &str, why: &str) {
    metrics::counter!("herald_events_unmatched_total", "flavour" => flavour, "event_type" => event_type)
        .increment(1);
    tracing::debug!(flavour, event_id, "{why}");
}

/// The 202's body: the one event's answer, or the batch's answers and their total; `notes`
/// say, in the same order, why an event causes no delivery.
pub fn answer(
    accepted: Vec<Accepted>,
    notes: Vec<Option<String>>,
    is_batch: bool,
) -> Result<IngestAnswer, ApiError> {
    let mut notes = notes.into_iter();
    let mut answers: Vec<AcceptedEvent> = accepted
        .into_iter()
        .map(|a| AcceptedEvent {
            event_id: a.event_id,
            deliveries: a.deliveries,
            note: notes.next().flatten(),
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
    request_body = LiveIngestBody,
    responses(
        (status = 202, body = IngestAnswer),
        (status = 400, body = ErrorBody, description = "LIVE.100011001: a field broke a rule \
            (the message names it, with the event's index in a batch); nothing is stored"),
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
    let notes = herald_store::unmatched::why_live_events_unmatched(
        state.store.as_ref(),
        &project_id,
        &events,
        &accepted,
    )
    .await?;
    for ((id, event), note) in events.iter().zip(&notes) {
        if let Some(why) = note {
            note_unmatched("live", event.event_type.as_str(), id.as_str(), why);
        }
    }
    let answer = answer(accepted, notes, is_batch)?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}
