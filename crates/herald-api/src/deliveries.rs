//! The delivery log and manual retry (SPEC §6).

use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use herald_core::field::FieldError;
use herald_core::timefmt::utc_millis;
use herald_store::{AttemptRecord, DeliveryFilter, DeliveryStatus, DeliveryView, RetryOutcome};
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
