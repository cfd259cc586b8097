//! Recording sources (SPEC §7): `/v1/{project_id}/record/sources`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use herald_core::field::FieldError;
use herald_core::project::ProjectId;
use herald_core::secrets::generate_hook_secret;
use herald_core::source::{
    Engine, RecordDir, RecordRoots, RecordingSource, SourceSpec, SourceTarget, format_max_pause,
};
use herald_core::storage::{DEFAULT_LIVE_PREFIX, DEFAULT_RTC_PREFIX, PLACEHOLDERS, RecordFormat};
use herald_core::timefmt::utc_seconds;
use herald_store::{SourceView, Store};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::openapi;
use crate::per_project::{Counted, ensure_room};
use crate::query::{QueryPairs, known_id, parse_page};

/// A create body, for the OpenAPI document; `herald_core::source::SourceSpec` parses it.
/// A source reports either Live events for an ingest domain or RTC events for an app:
/// exactly one of `publish_domain` and `app_id`. Fields it does not know are ignored.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub enum SourceBody {
    Live(LiveSourceBody),
    Rtc(RtcSourceBody),
}

/// A source that reports Live events.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct LiveSourceBody {
    #[schema(schema_with = engine)]
    engine: String,
    #[schema(schema_with = openapi::domain)]
    publish_domain: String,
    #[schema(schema_with = absent)]
    app_id: Option<String>,
    #[schema(schema_with = openapi::record_dir)]
    record_dir: String,
    #[schema(schema_with = download_base)]
    download_base: Option<String>,
    #[schema(schema_with = openapi::max_pause)]
    max_pause: Option<String>,
    #[schema(schema_with = live_record_format)]
    record_format: Option<String>,
    storage: Option<StorageBody>,
}

/// A source that reports RTC events.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct RtcSourceBody {
    #[schema(schema_with = engine)]
    engine: String,
    #[schema(schema_with = absent)]
    publish_domain: Option<String>,
    #[schema(schema_with = app_id)]
    app_id: String,
    #[schema(schema_with = openapi::record_dir)]
    record_dir: String,
    #[schema(schema_with = download_base)]
    download_base: Option<String>,
    #[schema(schema_with = openapi::max_pause)]
    max_pause: Option<String>,
    #[schema(schema_with = rtc_record_format)]
    record_format: Option<String>,
    storage: Option<StorageBody>,
}

/// The bucket a source uploads its recordings to (SPEC §7.1): Huawei OBS, AWS S3, MinIO,
/// Garage or any S3-compatible store. Every field but `path_style`, `object_prefix` and
/// `delete_local` is required; a refusal names `storage.{field}`.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct StorageBody {
    #[schema(schema_with = storage_endpoint)]
    endpoint: String,
    #[schema(schema_with = credential)]
    region: String,
    #[schema(schema_with = bucket)]
    bucket: String,
    #[schema(schema_with = credential)]
    access_key_id: String,
    /// Sealed at rest with the server's master key and never returned.
    #[schema(schema_with = credential)]
    secret_access_key: String,
    /// `true`: `{endpoint}/{bucket}/{key}` (MinIO, Garage); default `false`:
    /// virtual-hosted `{bucket}.{endpoint host}/{key}` (OBS, S3).
    path_style: Option<bool>,
    #[schema(schema_with = object_prefix)]
    object_prefix: Option<String>,
    /// Delete the local file once its object is confirmed and its event is durable;
    /// default `false`.
    delete_local: Option<bool>,
}

fn record_format_of(formats: &[RecordFormat]) -> ObjectBuilder {
    openapi::nullable_string(
        ObjectBuilder::new().enum_values(Some(
            formats
                .iter()
                .map(|f| f.as_str())
                .chain([""])
                .collect::<Vec<_>>(),
        )),
    )
    .description(Some(
        "The format recordings are stored in (a remux, `-c copy`; audio the container cannot \
         hold becomes AAC); matched case-insensitively. Needs `storage`. Empty, null or left \
         out: the file as the engine wrote it.",
    ))
}

fn live_record_format() -> ObjectBuilder {
    record_format_of(&RecordFormat::ALL)
}

fn rtc_record_format() -> ObjectBuilder {
    record_format_of(&RecordFormat::RTC)
}

fn storage_endpoint() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(1024))
        .pattern(Some(openapi::origin_url_pattern()))
        .description(Some(format!(
            "The S3 API's URL, without a path (e.g. `https://obs.cn-north-4.myhuaweicloud.com`); \
             also the events' `obs_location`. {}",
            openapi::PRIVATE_TARGETS
        )))
}

fn credential() -> ObjectBuilder {
    openapi::text(herald_core::storage::MAX_CREDENTIAL_BYTES).min_length(Some(1))
}

fn bucket() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(3))
        .max_length(Some(63))
        .pattern(Some("^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"))
        .description(Some(
            "An S3 bucket name; one with '.' needs `path_style` when the endpoint is https.",
        ))
}

fn object_prefix() -> ObjectBuilder {
    let names = PLACEHOLDERS.join("|");
    openapi::nullable_string(
        ObjectBuilder::new()
            .max_length(Some(herald_core::storage::MAX_KEY_BYTES))
            .pattern(Some(format!(
                "^([^{{}}/\\x00-\\x1f\\x7f]|\\{{({names})\\}})([^{{}}\\x00-\\x1f\\x7f]|\\{{({names})\\}})*$"
            ))),
    )
    .description(Some(format!(
        "The object key's template, without its extension (`.flv`, `.mp4`, `.m3u8`); \
         placeholders {}; not starting with '/', no '..' segment. Default (Live) `{}`, \
         (RTC) `{}`.",
        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", "),
        DEFAULT_LIVE_PREFIX,
        DEFAULT_RTC_PREFIX
    )))
}

fn engine() -> ObjectBuilder {
    openapi::one_of_names(Engine::ALL.map(Engine::as_str))
        .description(Some("The media server whose hooks the source takes."))
}

/// The target a source does not have: left out or null.
fn absent() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Null)
        .description(Some("Left out or null: a source has one target."))
}

fn app_id() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[0-9a-f]{24}$"))
        .description(Some(
            "The RTC app (24 lower-case hex characters) the source reports for; one that is \
             not an app of this project is a 400.",
        ))
}

fn download_base() -> ObjectBuilder {
    openapi::nullable_string(openapi::url_or_empty()).description(Some(
        "An absolute http:// or https:// URL with a host, no query string and no fragment, \
         at most 1024 bytes; a file's `download_url` is this plus its path below \
         `record_dir`. Empty, null or left out: files have no `download_url`.",
    ))
}

/// The list's page.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Describes the wire format only; never constructed.
pub struct ListQuery {
    #[param(schema_with = openapi::offset)]
    offset: Option<u64>,
    #[param(schema_with = openapi::limit_10)]
    limit: Option<u64>,
}

/// A recording source as returned.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceJson {
    id: String,
    project_id: String,
    engine: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_id: Option<String>,
    record_dir: String,
    download_base: Option<String>,
    /// Whole seconds, e.g. `30s`.
    max_pause: String,
    /// `FLV`, `MP4` or `HLS`; null: the file as the engine wrote it.
    record_format: Option<&'static str>,
    /// The bucket recordings are uploaded to; null: they stay on the media server's disk.
    storage: Option<StorageJson>,
    /// The URL to paste into the media server's hooks; it holds the source's secret.
    hook_url: String,
    /// UTC, `yyyy-mm-ddThh:mm:ssZ`.
    created_at: String,
    status: SourceStatusJson,
}

/// A source's bucket as returned: the secret access key never is.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageJson {
    endpoint: String,
    region: String,
    bucket: String,
    access_key_id: String,
    /// Always null: the secret is sealed and never returned.
    #[schema(value_type = Option<String>)]
    secret_access_key: Option<()>,
    /// Always true: a bucket cannot be saved without its secret.
    secret_access_key_set: bool,
    path_style: bool,
    object_prefix: String,
    delete_local: bool,
}

/// What is going on at a source.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceStatusJson {
    /// Streams with an open recording session.
    open_sessions: u64,
    /// Finished files not yet read and reported.
    files_waiting: u64,
    /// Of those, files whose upload to the source's bucket failed and is tried again.
    uploads_waiting: u64,
    /// The last file that could not be reported (missing, not media, outside the record dir).
    last_error: Option<SourceErrorJson>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceErrorJson {
    at: String,
    file: String,
    message: String,
}

impl SourceJson {
    /// The JSON of a source; `public_url` is where media servers reach Herald.
    pub fn new(view: &SourceView, public_url: &str) -> Self {
        let source = &view.source;
        let (publish_domain, app_id) = match &source.spec.target {
            SourceTarget::Live { publish_domain } => (Some(publish_domain.as_str().into()), None),
            SourceTarget::Rtc { app_id } => (None, Some(app_id.as_str().into())),
        };
        Self {
            id: source.id.clone(),
            project_id: source.project_id.as_str().into(),
            engine: source.spec.engine.as_str(),
            publish_domain,
            app_id,
            record_dir: source.spec.record_dir.as_str().into(),
            download_base: source
                .spec
                .download_base
                .as_ref()
                .map(|b| b.as_str().into()),
            max_pause: format_max_pause(source.spec.max_pause),
            record_format: source.spec.record_format.map(RecordFormat::as_str),
            storage: source.spec.storage.as_ref().map(|s| StorageJson {
                endpoint: s.endpoint.as_str().into(),
                region: s.region.clone(),
                bucket: s.bucket.clone(),
                access_key_id: s.access_key_id.clone(),
                secret_access_key: None,
                secret_access_key_set: true,
                path_style: s.path_style,
                object_prefix: s.object_prefix.as_str().into(),
                delete_local: s.delete_local,
            }),
            hook_url: source.hook_url(public_url),
            created_at: utc_seconds(source.created_at),
            status: SourceStatusJson {
                open_sessions: view.open_sessions,
                files_waiting: view.files_waiting,
                uploads_waiting: view.uploads_waiting,
                last_error: view.last_error.as_ref().map(|e| SourceErrorJson {
                    at: utc_seconds(e.at),
                    file: e.file.clone(),
                    message: e.message.clone(),
                }),
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceList {
    total: u64,
    sources: Vec<SourceJson>,
}

const SOURCE: &str = "recording source";

/// Creates a source for `project` from a validated spec: the one way in for the API and
/// the CLI. Its record dir must be inside one of the operator's `roots` (with symbolic
/// links resolved, when it exists already) and overlap no other project's; an RTC
/// source's app must be the project's.
pub async fn create_source(
    store: &dyn Store,
    roots: &RecordRoots,
    project: ProjectId,
    spec: SourceSpec,
    max_per_project: u64,
) -> Result<SourceView, ApiError> {
    ensure_room(store, &project, Counted::Sources, max_per_project).await?;
    if let SourceTarget::Rtc { app_id } = &spec.target
        && store.get_rtc_app(&project, app_id).await?.is_none()
    {
        return Err(FieldError::new("app_id", "is not an app of this project").into());
    }
    check_record_dir(store, roots, &project, &spec.record_dir).await?;
    let source = RecordingSource {
        id: RecordingSource::new_id(),
        project_id: project,
        spec,
        secret: generate_hook_secret(),
        created_at: OffsetDateTime::now_utc(),
    };
    store.insert_source(&source).await?;
    Ok(SourceView {
        source,
        open_sessions: 0,
        files_waiting: 0,
        uploads_waiting: 0,
        last_error: None,
    })
}

/// Refuses a record dir outside the operator's roots, led out of them by a symbolic link,
/// or overlapping another project's: each with a 400 naming `record_dir`.
async fn check_record_dir(
    store: &dyn Store,
    roots: &RecordRoots,
    project: &ProjectId,
    dir: &RecordDir,
) -> Result<(), ApiError> {
    const FIELD: &str = "record_dir";
    roots.check(FIELD, dir)?;
    // A link below a root must not lead out of every root. A dir that does not exist yet
    // is checked by its components alone; the tracker checks each file's real path again.
    if let Ok(real) = tokio::fs::canonicalize(dir.path()).await {
        let mut inside = false;
        for root in roots.iter() {
            let real_root = tokio::fs::canonicalize(root.path())
                .await
                .unwrap_or_else(|_| root.path().to_owned());
            inside |= real.starts_with(&real_root);
        }
        if !inside {
            return Err(FieldError::new(
                FIELD,
                "leads out of the allowed record directories by a symbolic link",
            )
            .into());
        }
    }
    let others = store.record_dirs_of_other_projects(project).await?;
    if others.iter().any(|other| other.overlaps(dir)) {
        return Err(FieldError::new(
            FIELD,
            "overlaps the record directory of another project's source: each project needs \
             a directory of its own, neither inside nor around another's",
        )
        .into());
    }
    Ok(())
}

/// Create a recording source.
#[utoipa::path(
    post, path = "/v1/{project_id}/record/sources", tag = "sources",
    request_body = SourceBody,
    responses(
        (status = 201, body = SourceJson),
        (status = 400, body = ErrorBody, description = "LIVE.100011001: a field broke a rule, \
            `record_dir` is outside the operator's record roots (none by default) or overlaps \
            another project's, or `app_id` is not an app of this project, or the project has as \
            many sources as HERALD_MAX_PER_PROJECT allows"),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<SourceJson>), ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let spec = SourceSpec::parse_allowing(&body, state.allow_private_targets)?;
    let view = create_source(
        state.store.as_ref(),
        &state.record_roots,
        project_id,
        spec,
        state.max_per_project,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(SourceJson::new(&view, &state.public_url)),
    ))
}

/// List a project's recording sources, in creation order.
#[utoipa::path(
    get, path = "/v1/{project_id}/record/sources", tag = "sources",
    params(ListQuery),
    responses((status = 200, body = SourceList)),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<SourceList>, ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let page = parse_page(&QueryPairs::parse(query.as_deref())?, 10)?;
    let (total, views) = state.store.list_sources(&project_id, page).await?;
    Ok(Json(SourceList {
        total,
        sources: views
            .iter()
            .map(|v| SourceJson::new(v, &state.public_url))
            .collect(),
    }))
}

/// Show one recording source, with its status.
#[utoipa::path(
    get, path = "/v1/{project_id}/record/sources/{id}", tag = "sources",
    params(("id" = String, Path, pattern = "^[0-9a-f]{32}$",
        description = "32 lower-case hex characters; any other id names no source (404)")),
    responses(
        (status = 200, body = SourceJson),
        (status = 404, body = ErrorBody, description = "LIVE.100011004: no such source"),
    ),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<Json<SourceJson>, ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let view = state
        .store
        .get_source(&project_id, known_id(&id, SOURCE)?)
        .await?
        .ok_or(ApiError::NotFound(SOURCE))?;
    Ok(Json(SourceJson::new(&view, &state.public_url)))
}

/// Delete a recording source: its hook URL stops working at once.
#[utoipa::path(
    delete, path = "/v1/{project_id}/record/sources/{id}", tag = "sources",
    params(("id" = String, Path, pattern = "^[0-9a-f]{32}$",
        description = "32 lower-case hex characters; any other id names no source (404)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody, description = "LIVE.100011004: no such source"),
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
        .delete_source(Some(&project_id), known_id(&id, SOURCE)?)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(SOURCE))
    }
}
