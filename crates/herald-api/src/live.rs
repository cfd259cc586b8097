//! The Live-flavour callback configuration API (SPEC §1): `/v1/{project_id}/record/callbacks`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use herald_core::config::live::{
    LiveCallbackConfig, LiveConfigRequest, LiveConfigSpec, PublishDomain, SignType,
};
use herald_core::event::live::LiveEventType;
use herald_core::field::FieldError;
use herald_core::timefmt::utc_seconds;
use herald_store::{LiveConfigFilter, StoreError};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::openapi;
use crate::per_project::{Counted, ensure_room};
use crate::query::{QueryPairs, known_id, parse_page};

/// A create or update body, for the OpenAPI document. Bodies are parsed by
/// `herald_core::config::live::LiveConfigRequest`, which enforces the rules described here;
/// fields it does not know are ignored.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct LiveConfigBody {
    #[schema(schema_with = openapi::domain)]
    publish_domain: String,
    #[schema(schema_with = openapi::app_selector)]
    app: String,
    #[schema(schema_with = notify_callback_url)]
    notify_callback_url: Option<String>,
    #[schema(schema_with = subscription)]
    notify_event_subscription: Option<Vec<String>>,
    #[schema(schema_with = sign_type)]
    sign_type: Option<String>,
    #[schema(schema_with = sign_key)]
    key: Option<String>,
}

fn notify_callback_url() -> ObjectBuilder {
    openapi::nullable_string(openapi::callback_url_or_empty(
        "`\"\"` for none (on update: removes it); left out or null: none (on update: kept)",
    ))
}

fn subscription() -> ArrayBuilder {
    openapi::subscription(
        LiveEventType::ALL.map(LiveEventType::as_str),
        "`[RECORD_FILE_COMPLETE]` (on update: kept)",
    )
}

fn sign_type() -> ObjectBuilder {
    openapi::nullable_string(openapi::one_of_names(
        [SignType::HmacSha256, SignType::Md5].map(SignType::as_str),
    ))
    .description(Some(
        "How notifications are signed; left out or null: `HMACSHA256` (on update: kept).",
    ))
}

fn sign_key() -> ObjectBuilder {
    openapi::nullable_string(ObjectBuilder::new().pattern(Some("^([A-Za-z0-9]{32})?$")))
        .max_length(Some(32))
        .description(Some(
            "The signing key: exactly 32 ASCII letters and digits; never returned. `\"\"` for \
             none (on update: removes it); left out or null: none (on update: kept).",
        ))
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

/// The list's filters and page.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct ListQuery {
    #[param(schema_with = openapi::domain_filter)]
    publish_domain: Option<String>,
    /// Only configs of this app (`*`: the wildcard configs); empty: any.
    #[param(schema_with = openapi::text_filter)]
    app: Option<String>,
    #[param(schema_with = openapi::offset)]
    offset: Option<u64>,
    #[param(schema_with = openapi::limit_10)]
    limit: Option<u64>,
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
    request_body = LiveConfigBody,
    responses(
        (status = 201, body = LiveConfigView),
        (status = 400, body = ErrorBody, description = "LIVE.100011001: a field broke a rule, \
            or the project has a config for this publish_domain and app already, or has as \
            many configs as HERALD_MAX_PER_PROJECT allows"),
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
    ensure_room(
        state.store.as_ref(),
        &project_id,
        Counted::LiveConfigs,
        state.max_per_project,
    )
    .await?;
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
    params(ListQuery),
    responses((status = 200, body = LiveConfigList)),
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
    params(("id" = String, Path, pattern = "^[0-9a-f]{32}$",
        description = "32 lower-case hex characters; any other id names no config (404)")),
    responses(
        (status = 200, body = LiveConfigView),
        (status = 404, body = ErrorBody, description = "LIVE.100011004: no such config"),
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
    params(("id" = String, Path, pattern = "^[0-9a-f]{32}$",
        description = "32 lower-case hex characters; any other id names no config (404)")),
    request_body = LiveConfigBody,
    responses(
        (status = 200, body = LiveConfigView),
        (status = 400, body = ErrorBody, description = "LIVE.100011001: a field broke a rule, \
            or another config of the project has this publish_domain and app"),
        (status = 404, body = ErrorBody, description = "LIVE.100011004: no such config"),
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
    params(("id" = String, Path, pattern = "^[0-9a-f]{32}$",
        description = "32 lower-case hex characters; any other id names no config (404)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody, description = "LIVE.100011004: no such config"),
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
