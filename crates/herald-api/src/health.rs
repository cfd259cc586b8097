//! Liveness, readiness and metrics, for load balancers, orchestrators and Prometheus.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: String,
}

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The store answers, the delivery worker runs and every background task is kept running;
/// 503 when not, saying which.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)),
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if state.worker_stopped.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "delivery worker stopped".into(),
            }),
        );
    }
    if let Some(task) = state.tasks.failed_tasks().first() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: format!("background task failed: {task}"),
            }),
        );
    }
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(Health {
                status: "ready".into(),
            }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "store unreachable".into(),
                }),
            )
        }
    }
}

/// Prometheus text: events accepted, deliveries by outcome, attempt latency, queue depth
/// by state, age of the oldest due delivery, each endpoint host's concurrency. Labels are
/// bounded (no URLs, no streams). With `HERALD_METRICS_LISTEN` set, it is served there
/// instead, and this listener answers 404.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, content_type = "text/plain; version=0.0.4", body = String),
        (status = 404, description = "Served on HERALD_METRICS_LISTEN instead"),
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.metrics_elsewhere {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    }
    metrics_text(&state).into_response()
}

fn metrics_text(state: &AppState) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

/// `/metrics` alone, for the address of `HERALD_METRICS_LISTEN`: no authentication, as
/// Prometheus scrapes it, so it belongs on an address only the scraper reaches.
pub fn metrics_router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(state): State<AppState>| async move { metrics_text(&state) }),
        )
        .with_state(state)
}
