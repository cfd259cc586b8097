//! The Live-flavour callback configuration API (SPEC §1): `/v1/{project_id}/record/callbacks`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use herald_core::config::live::{
    LiveCallbackConfig, LiveConfigRequest, LiveConfigSpec, PublishDomain,
};
use herald_core::field::FieldError;
use herald_core::timefmt::utc_seconds;
use herald_store::{LiveConfigFilter, StoreError};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::query::{QueryPairs, known_id, parse_page};

/// A create or update body, for the OpenAPI document. Bodies are parsed by
/// `herald_core::config::live::LiveConfigRequest`, which enforces the rules described here.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct LiveConfigBody {
    /// Ingest domain name. Required.
    publish_domain: String,
    /// App name, or `*` for any app. Required. An exact app wins over `*`.
    app: String,
    /// Absolute http(s) URL, no query or fragment, at most 1024 bytes. On update, `""`
    /// removes it; left out, it is kept.
    notify_callback_url: Option<String>,
    /// Any of `RECORD_START`, `RECORD_NEW_FILE_START`, `RECORD_FILE_COMPLETE`,
    /// `RECORD_OVER`, `RECORD_FAILED`; default `[RECORD_FILE_COMPLETE]`.
    notify_event_subscription: Option<Vec<String>>,
    /// `HMACSHA256` (default) or `MD5`.
    sign_type: Option<String>,
    /// 32 ASCII letters and digits. Never returned. On update, `""` removes it; left out,
    /// it is kept.
    key: Option<String>,
}

/// A config as returned: everything but the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveConfigView {
    id: String,
    publish_domain: String,
    app: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    notify_callback_url: Option<String>,
    notify_event_subscription: Vec<&'static str>,
    sign_type: &'static str,
    /// UTC, `yyyy-mm-ddThh:mm:ssZ`.
    create_time: String,
    /// UTC, `yyyy-mm-ddThh:mm:ssZ`.
    update_time: String,
}

impl From<&LiveCallbackConfig> for LiveConfigView {
    fn from(config: &LiveCallbackConfig) -> Self {
        let spec = &config.spec;
        Self {
            id: config.id.clone(),
            publish_domain: spec.publish_domain.as_str().to_owned(),
            app: spec.app.as_str().to_owned(),
            notify_callback_url: spec
                .notify_callback_url
                .as_ref()
                .map(|u| u.as_str().to_owned()),
            notify_event_subscription: spec.subscription.names(),
            sign_type: spec.sign_type.as_str(),
            create_time: utc_seconds(config.create_time),
            update_time: utc_seconds(config.update_time),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LiveConfigList {
    /// How many configs match the filters, over all pages.
    total: u64,
    callback_config: Vec<LiveConfigView>,
}

const CONFIG: &str = "record callback config";

fn duplicate(spec: &LiveConfigSpec) -> ApiError {
    ApiError::BadRequest(FieldError::new(
        "app",
        format!(
            "a callback config for publish_domain {:?} and app {:?} already exists in this project",
            spec.publish_domain.as_str(),
            spec.app.as_str()
        ),
    ))
}

/// Create a recording callback config.
#[utoipa::path(
    post, path = "/v1/{project_id}/record/callbacks", tag = "live",
    params(("project_id" = String, Path)),
    request_body = LiveConfigBody,
    responses(
        (status = 201, body = LiveConfigView),
        (status = 400, body = ErrorBody, description = "LIVE.100011001: a field broke a rule"),
        (status = 401, body = ErrorBody, description = "APIGW.0301"),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<LiveConfigView>), ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let spec = LiveConfigRequest::parse(&body, state.allow_private_targets)?.into_new_spec();
    let now = OffsetDateTime::now_utc();
    let config = LiveCallbackConfig {
        id: uuid::Uuid::new_v4().simple().to_string(),
        project_id,
        spec,
        create_time: now,
        update_time: now,
    };
    match state.store.insert_live_config(&config).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(LiveConfigView::from(&config)))),
        Err(StoreError::Conflict) => Err(duplicate(&config.spec)),
        Err(e) => Err(e.into()),
    }
}

/// List a project's recording callback configs, in creation order.
#[utoipa::path(
    get, path = "/v1/{project_id}/record/callbacks", tag = "live",
    params(
        ("project_id" = String, Path),
        ("publish_domain" = Option<String>, Query, description = "Only configs of this domain"),
        ("app" = Option<String>, Query, description = "Only configs of this app (`*` for wildcard configs)"),
        ("offset" = Option<u64>, Query, description = "≥ 0, default 0"),
        ("limit" = Option<u64>, Query, description = "1–100, default 10"),
    ),
    responses(
        (status = 200, body = LiveConfigList),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<LiveConfigList>, ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let query = QueryPairs::parse(query.as_deref())?;
    let page = parse_page(&query, 10)?;
    let filter = LiveConfigFilter {
        publish_domain: query
            .non_empty("publish_domain")
            .map(|d| PublishDomain::parse("publish_domain", d).map(|d| d.as_str().to_owned()))
            .transpose()?,
        app: query.non_empty("app").map(str::to_owned),
    };
    let (total, configs) = state
        .store
        .list_live_configs(&project_id, &filter, page)
        .await?;
    Ok(Json(LiveConfigList {
        total,
        callback_config: configs.iter().map(LiveConfigView::from).collect(),
    }))
}

/// Show one recording callback config.
#[utoipa::path(
    get, path = "/v1/{project_id}/record/callbacks/{id}", tag = "live",
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = LiveConfigView),
        (status = 404, body = ErrorBody, description = "LIVE.100011004"),
        (status = 401, body = ErrorBody),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<Json<LiveConfigView>, ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let config = state
        .store
        .get_live_config(&project_id, known_id(&id, CONFIG)?)
        .await?
        .ok_or(ApiError::NotFound(CONFIG))?;
    Ok(Json(LiveConfigView::from(&config)))
}

/// Update a recording callback config. Fields left out keep their values; `""` for
/// `notify_callback_url` or `key` removes it.
#[utoipa::path(
    put, path = "/v1/{project_id}/record/callbacks/{id}", tag = "live",
    params(("project_id" = String, Path), ("id" = String, Path)),
    request_body = LiveConfigBody,
    responses(
        (status = 200, body = LiveConfigView),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project_id, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<LiveConfigView>, ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let request = LiveConfigRequest::parse(&body, state.allow_private_targets)?;
    let current = state
        .store
        .get_live_config(&project_id, known_id(&id, CONFIG)?)
        .await?
        .ok_or(ApiError::NotFound(CONFIG))?;
    let config = LiveCallbackConfig {
        spec: request.apply_to(current.spec),
        update_time: OffsetDateTime::now_utc(),
        ..current
    };
    match state.store.update_live_config(&config).await {
        Ok(true) => Ok(Json(LiveConfigView::from(&config))),
        Ok(false) => Err(ApiError::NotFound(CONFIG)),
        Err(StoreError::Conflict) => Err(duplicate(&config.spec)),
        Err(e) => Err(e.into()),
    }
}

/// Delete a recording callback config.
#[utoipa::path(
    delete, path = "/v1/{project_id}/record/callbacks/{id}", tag = "live",
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project_id = caller.authorize(&project_id)?;
    if state
        .store
        .delete_live_config(&project_id, known_id(&id, CONFIG)?)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(CONFIG))
    }
}
