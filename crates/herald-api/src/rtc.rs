//! The RTC flavour's API (SPEC §2, §4): apps, their record callback, and RTC events.
//!
//! The project is the caller's (the SDK's `X-Project-Id`, checked by the authentication
//! middleware, or the token's); an app of another project is a 404 like a missing one.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use herald_core::config::rtc::{AppId, AppName, RecordCallbackRequest, RtcSubscription};
use herald_core::event::EventId;
use herald_core::event::rtc::parse_rtc_ingest;
use herald_core::field::FieldError;
use herald_core::timefmt::utc_millis;
use herald_store::{RecordCallback, RtcApp};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, RtcError};
use crate::ingest::{IngestAnswer, answer};
use crate::query::{QueryPairs, parse_page};

const APP: &str = "app";
/// The state of every app: Herald has no stopped or suspended apps.
const ACTIVE: &str = "ACTIVATION";

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApp {
    app_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppStateJson {
    /// Always `ACTIVATION`: Herald has no stopped apps.
    state: &'static str,
    update_time: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppJson {
    app_id: String,
    app_name: String,
    state: AppStateJson,
    /// UTC with milliseconds.
    create_time: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppList {
    /// How many apps the project has, over all pages.
    count: u64,
    apps: Vec<AppJson>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordCallbackJson {
    /// `""` when the app has no record callback.
    url: String,
    auth_key: String,
    notify_event_subscription: Vec<&'static str>,
    /// UTC with milliseconds.
    update_time: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppRecordCallback {
    app_id: String,
    record_callback: RecordCallbackJson,
}

/// A `PUT …/record-callback` body, for the OpenAPI document; parsed by
/// `herald_core::config::rtc::RecordCallbackRequest`.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct RecordCallbackBody {
    /// Absolute http(s) URL; `""` removes the callback.
    url: String,
    /// 32–64 ASCII letters and digits.
    auth_key: Option<String>,
    /// The event types the callback is sent (`RECORD_NEW_FILE_START`,
    /// `RECORD_FILE_COMPLETE`, `CLOUD_RECORD_SERVER_OVER`); all three when left out.
    notify_event_subscription: Option<Vec<String>>,
}

fn app_json(app: &RtcApp) -> AppJson {
    AppJson {
        app_id: app.app_id.as_str().to_owned(),
        app_name: app.app_name.as_str().to_owned(),
        state: AppStateJson {
            state: ACTIVE,
            update_time: utc_millis(app.created_at),
        },
        create_time: utc_millis(app.created_at),
    }
}

fn record_callback_json(app: &RtcApp) -> AppRecordCallback {
    let (url, auth_key, subscription) = match &app.callback {
        Some(c) => (
            c.url.as_str().to_owned(),
            c.auth_key
                .as_ref()
                .map(|k| k.expose().to_owned())
                .unwrap_or_default(),
            c.subscription.names(),
        ),
        None => (
            String::new(),
            String::new(),
            RtcSubscription::default().names(),
        ),
    };
    AppRecordCallback {
        app_id: app.app_id.as_str().to_owned(),
        record_callback: RecordCallbackJson {
            url,
            auth_key,
            notify_event_subscription: subscription,
            update_time: utc_millis(app.callback_updated_at),
        },
    }
}

/// An app id from the path: one that cannot be an app id names no app.
fn app_id(raw: &str) -> Result<AppId, RtcError> {
    AppId::parse(raw).ok_or(RtcError(ApiError::NotFound(APP)))
}

async fn find_app(state: &AppState, caller: &Caller, raw: &str) -> Result<RtcApp, RtcError> {
    state
        .store
        .get_rtc_app(&caller.project, &app_id(raw)?)
        .await?
        .ok_or(RtcError(ApiError::NotFound(APP)))
}

/// Create an app.
#[utoipa::path(
    post, path = "/v2/apps", tag = "rtc",
    request_body(content = serde_json::Value, description = "{\"app_name\": \"...\"} (1–64 characters)"),
    responses(
        (status = 201, body = CreatedApp),
        (status = 400, body = ErrorBody, description = "RTC.00001003"),
        (status = 401, body = ErrorBody),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn create_app(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedApp>), RtcError> {
    let now = OffsetDateTime::now_utc();
    let app = RtcApp {
        app_id: AppId::generate(),
        project_id: caller.project.clone(),
        app_name: AppName::parse_body(&body).map_err(ApiError::from)?,
        created_at: now,
        callback: None,
        callback_updated_at: now,
    };
    state.store.insert_rtc_app(&app).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApp {
            app_id: app.app_id.as_str().to_owned(),
        }),
    ))
}

/// List the project's apps in creation order.
#[utoipa::path(
    get, path = "/v2/apps", tag = "rtc",
    params(
        ("state" = Option<String>, Query, description = "ACTIVATION, DEACTIVATION, ARREARS or DELETED; Herald's apps are all ACTIVATION"),
        ("offset" = Option<u64>, Query, description = "≥ 0, default 0"),
        ("limit" = Option<u64>, Query, description = "1–100, default 100"),
    ),
    responses((status = 200, body = AppList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn list_apps(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<AppList>, RtcError> {
    let query = QueryPairs::parse(query.as_deref())?;
    let page = parse_page(&query, 100).map_err(ApiError::from)?;
    // The SDK's state filter: every Herald app is active, so another state lists none.
    match query.non_empty("state") {
        None | Some(ACTIVE) => {}
        Some("DEACTIVATION" | "ARREARS" | "DELETED") => {
            return Ok(Json(AppList {
                count: 0,
                apps: Vec::new(),
            }));
        }
        Some(_) => {
            return Err(ApiError::BadRequest(FieldError::new(
                "state",
                "must be ACTIVATION, DEACTIVATION, ARREARS or DELETED",
            ))
            .into());
        }
    }
    let (count, apps) = state.store.list_rtc_apps(&caller.project, page).await?;
    Ok(Json(AppList {
        count,
        apps: apps.iter().map(app_json).collect(),
    }))
}

/// Show an app.
#[utoipa::path(
    get, path = "/v2/apps/{app_id}", tag = "rtc",
    params(("app_id" = String, Path)),
    responses((status = 200, body = AppJson), (status = 404, body = ErrorBody, description = "RTC.00001003")),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn show_app(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<Json<AppJson>, RtcError> {
    Ok(Json(app_json(&find_app(&state, &caller, &raw).await?)))
}

/// Delete an app; its callbacks not yet sent are cancelled.
#[utoipa::path(
    delete, path = "/v2/apps/{app_id}", tag = "rtc",
    params(("app_id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn delete_app(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<StatusCode, RtcError> {
    if state
        .store
        .delete_rtc_app(&caller.project, &app_id(&raw)?)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(RtcError(ApiError::NotFound(APP)))
    }
}

/// Set an app's record callback, or remove it with `"url": ""`.
#[utoipa::path(
    put, path = "/v2/apps/{app_id}/record-callback", tag = "rtc",
    params(("app_id" = String, Path)),
    request_body = RecordCallbackBody,
    responses(
        (status = 200, body = AppRecordCallback),
        (status = 400, body = ErrorBody, description = "RTC.00001003"),
        (status = 404, body = ErrorBody, description = "RTC.00001003"),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn update_record_callback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Json<AppRecordCallback>, RtcError> {
    let app_id = app_id(&raw)?;
    let callback = match RecordCallbackRequest::parse(&body, state.allow_private_targets)
        .map_err(ApiError::from)?
    {
        RecordCallbackRequest::Set {
            url,
            auth_key,
            subscription,
        } => Some(RecordCallback {
            url,
            auth_key,
            subscription,
        }),
        RecordCallbackRequest::Remove => None,
    };
    let app = state
        .store
        .set_record_callback(
            &caller.project,
            &app_id,
            callback.as_ref(),
            OffsetDateTime::now_utc(),
        )
        .await?
        .ok_or(RtcError(ApiError::NotFound(APP)))?;
    Ok(Json(record_callback_json(&app)))
}

/// Show an app's record callback.
#[utoipa::path(
    get, path = "/v2/apps/{app_id}/record-callback", tag = "rtc",
    params(("app_id" = String, Path)),
    responses((status = 200, body = AppRecordCallback), (status = 404, body = ErrorBody)),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn show_record_callback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<Json<AppRecordCallback>, RtcError> {
    Ok(Json(record_callback_json(
        &find_app(&state, &caller, &raw).await?,
    )))
}

/// Report an RTC recording event, or `{"events": [...]}` with up to 1000.
///
/// Fields of seed 004 without `app_id` (and `file_size`); `event_type` (one of
/// RECORD_NEW_FILE_START, RECORD_FILE_COMPLETE, CLOUD_RECORD_SERVER_OVER) and
/// `stream_name` are required; optional `event_id` is the idempotency key.
#[utoipa::path(
    post, path = "/v2/apps/{app_id}/record/events", tag = "ingest",
    params(("app_id" = String, Path)),
    request_body(content = serde_json::Value, description = "One event, or {\"events\": [...]}"),
    responses(
        (status = 202, body = IngestAnswer),
        (status = 400, body = ErrorBody, description = "RTC.00001003: a field broke a rule"),
        (status = 404, body = ErrorBody, description = "RTC.00001003: no such app"),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn ingest_rtc(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<IngestAnswer>), RtcError> {
    let app_id = app_id(&raw)?;
    let (events, is_batch) = parse_rtc_ingest(&body).map_err(ApiError::from)?;
    let events: Vec<_> = events
        .into_iter()
        .map(|e| (e.event_id.clone().unwrap_or_else(EventId::generate), e))
        .collect();
    let accepted = state
        .store
        .ingest_rtc(&caller.project, &app_id, &events, OffsetDateTime::now_utc())
        .await?
        .ok_or(RtcError(ApiError::NotFound(APP)))?;
    state.wake.notify_one();
    metrics::counter!("herald_events_accepted_total", "flavour" => "rtc")
        .increment(events.len() as u64);
    Ok((StatusCode::ACCEPTED, Json(answer(accepted, is_batch)?)))
}
