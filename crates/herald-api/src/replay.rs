//! Replay (SPEC §6): a range of retained history sent again to a Live config or an RTC
//! app's record callback, as it matches now.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use herald_core::config::rtc::AppId;
use herald_core::field::{FieldError, JsonObject};
use herald_core::timefmt::parse_utc_seconds;
use herald_store::{REPLAY_MOST, ReplayTarget, Replayed};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, RtcError};
use crate::openapi;
use crate::query::known_id;

/// A replay's range, for the OpenAPI document; [`parse_range`] parses it. Fields it does
/// not know are ignored.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct ReplayBody {
    /// UTC, yyyy-mm-ddThh:mm:ssZ: events accepted at or after this.
    #[schema(schema_with = openapi::utc_seconds)]
    since: String,
    /// UTC, yyyy-mm-ddThh:mm:ssZ: events accepted before this (a range that ends before
    /// it begins holds nothing).
    #[schema(schema_with = openapi::utc_seconds)]
    until: String,
}

/// What a replay queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayedJson {
    /// New deliveries created.
    queued: u64,
}

/// `since` and `until`, both required; errors name the field.
pub fn parse_range(body: &[u8]) -> Result<(OffsetDateTime, OffsetDateTime), FieldError> {
    let body = JsonObject::parse(body)?;
    let time = |field: &str| parse_utc_seconds(field, body.required_str(field)?);
    Ok((time("since")?, time("until")?))
}

async fn replay(
    state: &AppState,
    caller: &Caller,
    target: ReplayTarget,
    body: &[u8],
) -> Result<(StatusCode, Json<ReplayedJson>), ApiError> {
    let (since, until) = parse_range(body)?;
    let what = match target {
        ReplayTarget::Live(_) => "record callback config",
        ReplayTarget::Rtc(_) => "app",
    };
    match state
        .store
        .replay(
            &caller.project,
            &target,
            since,
            until,
            OffsetDateTime::now_utc(),
        )
        .await?
    {
        Replayed::Queued(queued) => {
            if queued > 0 {
                state.wake.notify_one();
            }
            Ok((StatusCode::ACCEPTED, Json(ReplayedJson { queued })))
        }
        Replayed::NotFound => Err(ApiError::NotFound(what)),
        Replayed::TooMany => Err(ApiError::BadRequest(FieldError::new(
            "until",
            format!("the range holds more than {REPLAY_MOST} events; replay it in parts"),
        ))),
    }
}

/// Send a range of retained history again to a config, as it matches now.
///
/// Every retained event accepted in `[since, until)` that the config matches now (its
/// domain, its app or `*`, its subscription) gets a new delivery, signed afresh with the
/// config's key, carrying the original `Herald-Event-Id`, in acceptance order per stream.
#[utoipa::path(
    post, path = "/v1/{project_id}/record/callbacks/{id}/replay", tag = "live",
    params(("id" = String, Path, pattern = "^[0-9a-f]{32}$",
        description = "32 lower-case hex characters; any other id names no config (404)")),
    request_body = ReplayBody,
    responses(
        (status = 202, body = ReplayedJson),
        (status = 400, body = ErrorBody, description = "LIVE.100011001: a field broke a rule, \
            or the range holds more than 10000 events"),
        (status = 404, body = ErrorBody, description = "LIVE.100011004: no such config"),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn replay_live(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project_id, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<ReplayedJson>), ApiError> {
    caller.authorize(&project_id)?;
    let id = known_id(&id, "record callback config")?.to_owned();
    replay(&state, &caller, ReplayTarget::Live(id), &body).await
}

/// Send a range of retained history again to an app's record callback, as it is now.
///
/// As for a Live config: every retained event of the app accepted in `[since, until)` whose
/// type the callback subscribes to now gets a new delivery, signed afresh, with its
/// original `Herald-Event-Id`, in order per stream.
#[utoipa::path(
    post, path = "/v2/apps/{app_id}/record-callback/replay", tag = "rtc",
    params(("app_id" = String, Path, pattern = "^[0-9a-f]{24}$",
        description = "24 lower-case hex characters; another project's app, or none, is a 404")),
    request_body = ReplayBody,
    responses(
        (status = 202, body = ReplayedJson),
        (status = 400, body = ErrorBody, description = "RTC.00001003: a field broke a rule, \
            or the range holds more than 10000 events"),
        (status = 404, body = ErrorBody, description = "RTC.00001003: no such app"),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn replay_rtc(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<ReplayedJson>), RtcError> {
    let app_id = AppId::parse(&raw).ok_or(RtcError(ApiError::NotFound("app")))?;
    Ok(replay(&state, &caller, ReplayTarget::Rtc(app_id), &body).await?)
}
