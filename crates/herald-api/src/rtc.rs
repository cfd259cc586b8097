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
use herald_core::event::rtc::{RtcEventType, parse_rtc_ingest};
use herald_core::field::FieldError;
use herald_core::timefmt::utc_millis;
use herald_store::{RecordCallback, RtcApp};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, RtcError};
use crate::ingest::{self, IngestAnswer, answer};
use crate::openapi;
use crate::per_project::{Counted, ensure_room};
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
/// `herald_core::config::rtc::RecordCallbackRequest`: a callback to set, or `"url": ""` to
/// remove it. Fields it does not know are ignored.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub enum RecordCallbackBody {
    Set(SetRecordCallback),
    Remove(RemoveRecordCallback),
}

/// Sets the app's record callback.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct SetRecordCallback {
    #[schema(schema_with = openapi::callback_url)]
    url: String,
    #[schema(schema_with = auth_key)]
    auth_key: Option<String>,
    #[schema(schema_with = subscription)]
    notify_event_subscription: Option<Vec<String>>,
}

/// `"url": ""` removes the app's record callback; the other fields are then not read.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct RemoveRecordCallback {
    #[schema(schema_with = no_url)]
    url: String,
}

fn auth_key() -> ObjectBuilder {
    openapi::nullable_string(ObjectBuilder::new().pattern(Some("^([A-Za-z0-9]{32,64})?$")))
        .max_length(Some(64))
        .description(Some(
            "The key callbacks are signed with (X-Rtc-Signature): 32 to 64 ASCII letters and \
             digits. Empty, null or left out: callbacks are not signed.",
        ))
}

fn subscription() -> ArrayBuilder {
    openapi::subscription(RtcEventType::ALL.map(RtcEventType::as_str), "all three")
}

fn no_url() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(0))
        .description(Some("Empty: removes the record callback."))
}

/// A create-app body.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct CreateAppBody {
    #[schema(schema_with = openapi::app_name)]
    app_name: String,
}

/// The app list's filter and page.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct ListAppsQuery {
    #[param(schema_with = state_filter)]
    state: Option<String>,
    #[param(schema_with = openapi::offset)]
    offset: Option<u64>,
    #[param(schema_with = openapi::limit_100)]
    limit: Option<u64>,
}

/// The states the SDK can filter by; every Herald app is `ACTIVATION`.
const STATES: [&str; 4] = [ACTIVE, "DEACTIVATION", "ARREARS", "DELETED"];

fn state_filter() -> ObjectBuilder {
    openapi::one_of_names(std::iter::once("").chain(STATES)).description(Some(
        "Only apps in this state (Herald's apps are all ACTIVATION); empty: any.",
    ))
}

/// An RTC ingest body, for the OpenAPI document: one event, or a batch.
/// `herald_core::event::rtc::parse_rtc_ingest` parses it; the body is at most 1 MiB.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub enum RtcIngestBody {
    One(Box<RtcEventBody>),
    Batch(RtcEventBatch),
}

/// `{"events": [...]}`: 1 to 1000 events, accepted or refused together.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct RtcEventBatch {
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<RtcEventBody>,
}

/// One RTC recording event: the fields of seed 004 but `app_id`, which Herald adds, plus
/// `file_size` and `event_id`. A field it does not name is refused; null is a field left
/// out.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct RtcEventBody {
    #[schema(schema_with = ingest::event_id)]
    event_id: Option<String>,
    #[schema(schema_with = rtc_event_type)]
    event_type: String,
    #[schema(schema_with = ingest::routing_key)]
    stream_name: String,
    #[schema(schema_with = ingest::optional_text)]
    record_format: Option<String>,
    #[schema(schema_with = ingest::optional_url_text)]
    download_url: Option<String>,
    #[schema(schema_with = ingest::count)]
    file_size: Option<u64>,
    #[schema(schema_with = ingest::count)]
    record_duration: Option<u64>,
    #[schema(schema_with = ingest::optional_text)]
    start_time: Option<String>,
    #[schema(schema_with = ingest::optional_text)]
    end_time: Option<String>,
    #[schema(schema_with = ingest::count)]
    width: Option<u64>,
    #[schema(schema_with = ingest::count)]
    height: Option<u64>,
    #[schema(schema_with = ingest::optional_text)]
    obs_location: Option<String>,
    #[schema(schema_with = ingest::optional_text)]
    obs_bucket: Option<String>,
    #[schema(schema_with = ingest::optional_text)]
    obs_object: Option<String>,
    #[schema(schema_with = ingest::optional_text)]
    job_id: Option<String>,
    #[schema(schema_with = room_id)]
    room_id: Option<String>,
    #[schema(schema_with = ingest::optional_text)]
    detail_message: Option<String>,
}

fn rtc_event_type() -> ObjectBuilder {
    openapi::one_of_names(RtcEventType::ALL.map(RtcEventType::as_str))
}

/// A name, as `stream_name` is: no control characters.
fn room_id() -> ObjectBuilder {
    ingest::optional_text_of(256)
        .pattern(Some(openapi::NAME))
        .description(Some(
            "At most 256 bytes, no control character (U+0000 to U+001F, U+007F).",
        ))
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
    request_body = CreateAppBody,
    responses(
        (status = 201, body = CreatedApp),
        (status = 400, body = ErrorBody, description = "RTC.00001003: a field broke a rule, \
            or the project has as many apps as HERALD_MAX_PER_PROJECT allows"),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn create_app(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedApp>), RtcError> {
    let app_name = AppName::parse_body(&body).map_err(ApiError::from)?;
    ensure_room(
        state.store.as_ref(),
        &caller.project,
        Counted::RtcApps,
        state.max_per_project,
    )
    .await?;
    let now = OffsetDateTime::now_utc();
    let app = RtcApp {
        app_id: AppId::generate(),
        project_id: caller.project.clone(),
        app_name,
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
    params(ListAppsQuery),
    responses((status = 200, body = AppList)),
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
    params(("app_id" = String, Path, pattern = "^[0-9a-f]{24}$",
        description = "24 lower-case hex characters; another project's app, or none, is a 404")),
    responses(
        (status = 200, body = AppJson),
        (status = 404, body = ErrorBody, description = "RTC.00001003: no such app"),
    ),
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
    params(("app_id" = String, Path, pattern = "^[0-9a-f]{24}$",
        description = "24 lower-case hex characters; another project's app, or none, is a 404")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody, description = "RTC.00001003: no such app"),
    ),
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
    params(("app_id" = String, Path, pattern = "^[0-9a-f]{24}$",
        description = "24 lower-case hex characters; another project's app, or none, is a 404")),
    request_body = RecordCallbackBody,
    responses(
        (status = 200, body = AppRecordCallback),
        (status = 400, body = ErrorBody, description = "RTC.00001003: a field broke a rule"),
        (status = 404, body = ErrorBody, description = "RTC.00001003: no such app"),
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
    params(("app_id" = String, Path, pattern = "^[0-9a-f]{24}$",
        description = "24 lower-case hex characters; another project's app, or none, is a 404")),
    responses(
        (status = 200, body = AppRecordCallback),
        (status = 404, body = ErrorBody, description = "RTC.00001003: no such app"),
    ),
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
    params(("app_id" = String, Path, pattern = "^[0-9a-f]{24}$",
        description = "24 lower-case hex characters; another project's app, or none, is a 404")),
    request_body = RtcIngestBody,
    responses(
        (status = 202, body = IngestAnswer),
        (status = 400, body = ErrorBody, description = "RTC.00001003: a field broke a rule \
            (the message names it, with the event's index in a batch); nothing is stored"),
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
    let notes: Vec<Option<String>> = events
        .iter()
        .zip(&accepted)
        .map(|((id, event), a)| {
            (a.deliveries == 0).then(|| {
                let why = format!(
                    "0 deliveries: app {} has no record callback that subscribes to {}",
                    app_id.as_str(),
                    event.event_type.as_str()
                );
                crate::ingest::note_unmatched("rtc", event.event_type.as_str(), id.as_str(), &why);
                why
            })
        })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(answer(accepted, notes, is_batch)?),
    ))
}
