//! The delivery log, manual retry one by one or of everything a filter matches (SPEC §6).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use herald_core::field::{FieldError, JsonObject, check_text};
use herald_core::timefmt::{parse_utc_seconds, utc_millis};
use herald_store::{
    AttemptRecord, DeliveryFilter, DeliveryStatus, DeliveryView, RetryFilter, RetryOutcome,
};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::openapi::schema::ObjectBuilder;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::openapi;
use crate::query::{QueryPairs, parse_page};

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptJson {
    /// UTC with milliseconds.
    at: String,
    /// The receiver's HTTP status; absent when no answer came.
    status_code: Option<u16>,
    /// Why the attempt failed (`HTTP 500`, `timeout: …`, `connect error: …`, `refused target: …`).
    error: Option<String>,
    latency_ms: u64,
    /// The first bytes of the receiver's answer.
    response: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryJson {
    id: String,
    event_id: String,
    config_id: String,
    url: String,
    event_type: String,
    #[schema(schema_with = status)]
    status: &'static str,
    created_at: String,
    next_attempt_at: Option<String>,
    attempts: Vec<AttemptJson>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// How many deliveries match the filters, counted up to 10,000: a longer history
    /// answers 10,000, so that a page costs the same however much history is kept.
    total: u64,
    deliveries: Vec<DeliveryJson>,
}

fn attempt_json(a: AttemptRecord) -> AttemptJson {
    AttemptJson {
        at: utc_millis(a.at),
        status_code: a.status_code,
        error: a.error,
        latency_ms: a.latency_ms,
        response: a.response_head,
    }
}

fn delivery_json(d: DeliveryView) -> DeliveryJson {
    DeliveryJson {
        id: d.id.to_string(),
        event_id: d.event_id,
        config_id: d.config_id,
        url: d.url,
        event_type: d.event_type,
        status: d.status.as_str(),
        created_at: utc_millis(d.created_at),
        next_attempt_at: d.next_attempt_at.map(utc_millis),
        attempts: d.attempts.into_iter().map(attempt_json).collect(),
    }
}

/// The log's filters and page.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct ListQuery {
    #[param(schema_with = status_filter)]
    status: Option<String>,
    /// Only the deliveries of this event; empty: any.
    #[param(schema_with = openapi::text_filter)]
    event_id: Option<String>,
    #[param(schema_with = openapi::offset)]
    offset: Option<u64>,
    #[param(schema_with = openapi::limit_10)]
    limit: Option<u64>,
}

/// Every status, as the log names them.
const STATUSES: [DeliveryStatus; 5] = [
    DeliveryStatus::Pending,
    DeliveryStatus::Succeeded,
    DeliveryStatus::Failed,
    DeliveryStatus::Dead,
    DeliveryStatus::Cancelled,
];

fn status_filter() -> ObjectBuilder {
    openapi::one_of_names(std::iter::once("").chain(STATUSES.map(DeliveryStatus::as_str)))
        .description(Some("Only deliveries in this state; empty: any."))
}

fn status() -> ObjectBuilder {
    openapi::one_of_names(STATUSES.map(DeliveryStatus::as_str)).description(Some(
        "`pending`, `succeeded`, `failed` (waiting for a retry), `dead` or `cancelled`.",
    ))
}

/// List the project's deliveries, newest first, with their attempts.
#[utoipa::path(
    get, path = "/v1/{project_id}/record/deliveries", tag = "deliveries",
    params(ListQuery),
    responses((status = 200, body = DeliveryList)),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeliveryList>, ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let query = QueryPairs::parse(query.as_deref())?;
    let page = parse_page(&query, 10)?;
    let status = query
        .non_empty("status")
        .map(|s| {
            DeliveryStatus::parse(s).ok_or_else(|| {
                FieldError::new(
                    "status",
                    "must be pending, succeeded, failed, dead or cancelled",
                )
            })
        })
        .transpose()?;
    let filter = DeliveryFilter {
        status,
        event_id: query.non_empty("event_id").map(str::to_owned),
    };
    let (total, deliveries) = state
        .store
        .list_deliveries(&project_id, &filter, page)
        .await?;
    Ok(Json(DeliveryList {
        total,
        deliveries: deliveries.into_iter().map(delivery_json).collect(),
    }))
}

/// Re-queue a dead or failed delivery for an attempt now.
#[utoipa::path(
    post, path = "/v1/{project_id}/record/deliveries/{id}/retry", tag = "deliveries",
    params(("id" = i64, Path,
        description = "The delivery's id, as the log shows it; any other names no delivery (404)")),
    responses(
        (status = 202, description = "Re-queued"),
        (status = 400, body = ErrorBody, description = "LIVE.100011001: the delivery is not \
            dead or failed, or its callback config was deleted"),
        (status = 404, body = ErrorBody, description = "LIVE.100011004: no such delivery"),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    const DELIVERY: &str = "delivery";
    let project_id = caller.authorize(&project_id)?;
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound(DELIVERY))?;
    match state
        .store
        .retry_delivery(&project_id, id, OffsetDateTime::now_utc())
        .await?
    {
        RetryOutcome::Requeued => {
            state.wake.notify_one();
            Ok(StatusCode::ACCEPTED)
        }
        RetryOutcome::NotFound => Err(ApiError::NotFound(DELIVERY)),
        RetryOutcome::ConfigDeleted => Err(ApiError::BadRequest(FieldError::new(
            "id",
            "the delivery's callback config was deleted; there is nowhere to send it",
        ))),
        RetryOutcome::NotRetryable(status) => Err(ApiError::BadRequest(FieldError::new(
            "id",
            format!(
                "the delivery is {}; only dead or failed deliveries can be retried",
                status.as_str()
            ),
        ))),
    }
}

/// A bulk retry's filters, for the OpenAPI document; [`parse_retry_filter`] parses it.
/// Fields it does not know are ignored.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct RetryBody {
    #[schema(schema_with = retryable_status)]
    status: String,
    /// Only Live deliveries of events of this ingest domain (case-insensitive).
    #[schema(schema_with = filter_text_253)]
    publish_domain: Option<String>,
    /// Only Live deliveries of events of this app.
    #[schema(schema_with = filter_text_256)]
    app: Option<String>,
    /// Only RTC deliveries of this app.
    #[schema(schema_with = filter_text_256)]
    app_id: Option<String>,
    #[schema(schema_with = openapi::utc_seconds_filter)]
    since: Option<String>,
    #[schema(schema_with = openapi::utc_seconds_filter)]
    until: Option<String>,
}

fn retryable_status() -> ObjectBuilder {
    openapi::one_of_names(["dead", "failed"]).description(Some(
        "Re-queue dead deliveries, or failed ones waiting for a later retry (now instead).",
    ))
}

fn filter_text_253() -> ObjectBuilder {
    openapi::nullable_string(openapi::text(253))
        .description(Some("At most 253 bytes; null or left out: any."))
}

fn filter_text_256() -> ObjectBuilder {
    openapi::nullable_string(openapi::text(256))
        .description(Some("At most 256 bytes; null or left out: any."))
}

/// What a bulk retry did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetriedJson {
    /// Deliveries re-queued by this request.
    queued: u64,
    /// More matched than one request re-queues (500): repeat the request to queue the
    /// rest (it never queues one twice).
    more: bool,
}

/// A bulk retry's body as a store filter; errors name the field.
pub fn parse_retry_filter(body: &[u8]) -> Result<RetryFilter, FieldError> {
    let body = JsonObject::parse(body)?;
    let status = match body.optional_str("status")? {
        None => return Err(FieldError::new("status", "is required")),
        Some("dead") => DeliveryStatus::Dead,
        Some("failed") => DeliveryStatus::Failed,
        Some(_) => return Err(FieldError::new("status", "must be dead or failed")),
    };
    let text = |field: &str, max: usize| -> Result<Option<String>, FieldError> {
        let value = body.optional_str(field)?;
        if let Some(v) = value {
            check_text(field, v, max)?;
        }
        Ok(value.map(str::to_owned))
    };
    let time = |field: &str| {
        body.optional_str(field)?
            .map(|raw| parse_utc_seconds(field, raw))
            .transpose()
    };
    Ok(RetryFilter {
        status,
        publish_domain: text("publish_domain", 253)?,
        app: text("app", 256)?,
        app_id: text("app_id", 256)?,
        since: time("since")?,
        until: time("until")?,
    })
}

/// Re-queue every dead (or failed) delivery the filters match, oldest first: each
/// stream's in their order, behind any open delivery of their stream.
#[utoipa::path(
    post, path = "/v1/{project_id}/record/deliveries/retry", tag = "deliveries",
    request_body = RetryBody,
    responses(
        (status = 202, body = RetriedJson, description = "Re-queued; `more` says to repeat \
            the request for the rest"),
        (status = 400, body = ErrorBody, description = "LIVE.100011001: a field broke a rule"),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn retry_matching(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<RetriedJson>), ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let filter = parse_retry_filter(&body)?;
    let done = state
        .store
        .retry_matching(&project_id, &filter, OffsetDateTime::now_utc())
        .await?;
    if done.queued > 0 {
        state.wake.notify_one();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(RetriedJson {
            queued: done.queued,
            more: done.more,
        }),
    ))
}
