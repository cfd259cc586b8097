//! Herald's HTTP API.
//!
//! - [`auth`]: AK/SK and token authentication, the body size bound, the [`auth::Caller`].
//! - [`live`]: the Live-flavour callback configuration API (SPEC §1).
//! - [`ingest`]: recording events from engines (SPEC §4).
//! - [`rtc`]: the RTC flavour: apps, record callbacks, RTC events (SPEC §2, §4).
//! - [`sources`]: recording sources (SPEC §7).
//! - [`hooks`]: the media servers' hooks, which drive recording sessions (SPEC §7).
//! - [`per_project`]: the cap on configs, apps and sources per project.
//! - [`deliveries`]: the delivery log and manual retry (SPEC §6).
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`whoami`]: the caller's project, for clients that hold only a token (the console).
//! - [`console`]: the web console's files, at `/console/`.
//! - [`error`]: the one error type that becomes an HTTP answer.
//! - [`openapi`]: the document's shared rules (patterns, bounds) and common answers.
//! - [`request_id`]: `X-request-id` on every answer.
//! - [`server`]: the HTTP server: header and body read timeouts, the connection cap.
//!
//! [`router`] assembles everything; [`serve`] runs it on a bound listener until a
//! cancellation token fires, so tests bind port 0 and stop the server at will.
#![forbid(unsafe_code)]

pub mod auth;
pub mod console;
pub mod deliveries;
pub mod error;
pub mod health;
pub mod hooks;
pub mod ingest;
pub mod live;
pub mod openapi;
pub mod per_project;
mod query;
pub mod request_id;
pub mod rtc;
pub mod server;
pub mod sources;
pub mod whoami;

use std::sync::Arc;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router, middleware};
use herald_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::set_header::SetRequestHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::StaticCredentials;
use crate::error::ApiError;
use crate::openapi::Conventions;

/// What every handler shares: one allocation, so that the clone axum makes for each
/// extractor and middleware of a request is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// The one way to the database.
    pub store: Arc<dyn Store>,
    /// Credentials from the config file, checked before the store's.
    pub credentials: Arc<StaticCredentials>,
    /// The operator's `--allow-private-targets`: lets configs point at private addresses.
    pub allow_private_targets: bool,
    /// Signalled after a commit that made deliveries due, so the worker need not poll.
    pub wake: Arc<Notify>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Where media servers reach this server: the base of every source's hook URL.
    pub public_url: Arc<str>,
    /// The directories the operator lets sources record into (`HERALD_RECORD_ROOTS`).
    pub record_roots: Arc<herald_core::source::RecordRoots>,
    /// Signalled after a hook changed a recording session, so the tracker need not poll.
    pub recordings: Arc<Notify>,
    /// Cancelled when the delivery worker stops: `/readyz` then answers 503, since
    /// events would be accepted and never delivered.
    pub worker_stopped: CancellationToken,
    /// Most callback configs, apps and recording sources (each counted apart) one project
    /// may have, so that one tenant cannot fill the store or slow every match and list.
    pub max_per_project: u64,
    /// The server's other background tasks (ingest committer, retention, recording
    /// tracker): `/readyz` answers 503 naming one that could not be kept running.
    pub tasks: herald_store::supervision::Supervisor,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Self-hosted recording callbacks, wire-compatible with the Huawei Cloud \
                       Live and SparkRTC recording-callback APIs."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "live", description = "Live-flavour callback configs (SPEC §1)"),
        (name = "rtc", description = "RTC-flavour apps and record callbacks (SPEC §2)"),
        (name = "ingest", description = "Recording events from engines (SPEC §4)"),
        (name = "sources", description = "Recording sources: media servers' hooks (SPEC §7)"),
        (name = "deliveries", description = "The delivery log and manual retry (SPEC §6)"),
        (name = "operations", description = "Health and documents"),
        (name = "auth", description = "Who the credential belongs to"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "aksk",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "SDK-HMAC-SHA256 Access=AK, SignedHeaders=…, Signature=…, with X-Sdk-Date",
            ))),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Auth-Token"))),
        );
    }
}

/// The whole application: routes, authentication, the OpenAPI document, error mapping.
pub fn router(state: AppState) -> Router {
    let authenticated = OpenApiRouter::new()
        .routes(routes!(live::create, live::list))
        .routes(routes!(live::show, live::update, live::delete))
        .routes(routes!(ingest::ingest_live))
        .routes(routes!(deliveries::list))
        .routes(routes!(deliveries::retry))
        .routes(routes!(rtc::create_app, rtc::list_apps))
        .routes(routes!(rtc::show_app, rtc::delete_app))
        .routes(routes!(
            rtc::update_record_callback,
            rtc::show_record_callback
        ))
        .routes(routes!(rtc::ingest_rtc))
        .routes(routes!(sources::create, sources::list))
        .routes(routes!(sources::show, sources::delete))
        .routes(routes!(whoami::projects))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route_layer(RequestBodyLimitLayer::new(auth::MAX_BODY_BYTES))
        .route_layer(middleware::map_response(auth::explain_body_limit));
    let public = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics));
    let (routes, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(authenticated)
        .merge(public)
        .split_for_parts();
    // After the merge: a derive's modifiers run before the routes' operations are in.
    Conventions.modify(&mut openapi);
    let openapi = Arc::new(openapi);
    let hostname: Arc<str> = request_id::hostname().into();
    routes
        .route(
            "/openapi.json",
            get(move || async move { Json(openapi.as_ref().clone()) }),
        )
        .merge(console::router())
        .merge(hooks::router())
        .fallback(|| async { ApiError::NoSuchApi })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("a handler panicked").into_response()
        }))
        .layer(TraceLayer::new_for_http().make_span_with(request_id::span))
        .layer(PropagateRequestIdLayer::new(request_id::REQUEST_ID))
        .layer(SetRequestHeaderLayer::overriding(
            request_id::REQUEST_ID,
            request_id::make_request_id(hostname),
        ))
        .with_state(state)
}

pub use server::{ServerLimits, serve};
