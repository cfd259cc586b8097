//! Endpoint health (SPEC §6): per callback host of the project, how its callbacks fare.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, State};
use herald_core::timefmt::utc_millis;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// The window the success rate covers.
const RATE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How far back the last error is looked for.
const ERROR_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What the delivery worker of this server knows of a project's hosts now.
pub trait EndpointLoad: Send + Sync {
    /// The concurrency of a host that has not been cut.
    fn full(&self) -> u32;
    /// By host: (concurrency now, callbacks on the wire); hosts not listed are at
    /// [`EndpointLoad::full`] with none.
    fn load_of_project(&self, project: &str) -> HashMap<String, (u32, u32)>;
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointJson {
    /// The callback host (a project's callbacks to one host share its limits).
    host: String,
    /// Share of the attempts of the last 15 minutes answered 2xx, 0 to 1; null without
    /// attempts.
    success_rate: Option<f64>,
    /// Callbacks on the wire now, from this server.
    in_flight: u32,
    /// How many callbacks this server sends the host at once now: halved when it answers
    /// 429, regained step by step after successes.
    concurrency: u32,
    /// The last failed attempt's error (within a day).
    last_error: Option<String>,
    /// UTC with milliseconds.
    last_error_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    endpoints: Vec<EndpointJson>,
}

/// The project's callback hosts and how their callbacks fare, by host.
#[utoipa::path(
    get, path = "/v1/{project_id}/record/endpoints", tag = "deliveries",
    responses((status = 200, body = EndpointList)),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project_id): Path<String>,
) -> Result<Json<EndpointList>, ApiError> {
    let project_id = caller.authorize(&project_id)?;
    let now = OffsetDateTime::now_utc();
    let attempts = state
        .store
        .endpoint_attempts(&project_id, now - RATE_WINDOW, now - ERROR_WINDOW)
        .await?;
    let mut load = state.endpoint_load.load_of_project(project_id.as_str());
    let full = state.endpoint_load.full();
    let mut by_host: BTreeMap<String, EndpointJson> = BTreeMap::new();
    for a in attempts {
        let host = a
            .endpoint
            .split_once(' ')
            .map_or(a.endpoint.as_str(), |(_, h)| h)
            .to_owned();
        let (concurrency, in_flight) = load.remove(&host).unwrap_or((full, 0));
        let e = by_host.entry(host.clone()).or_insert(EndpointJson {
            host,
            success_rate: None,
            in_flight,
            concurrency,
            last_error: None,
            last_error_at: None,
        });
        if a.attempts > 0 {
            e.success_rate = Some(a.successes as f64 / a.attempts as f64);
        }
        if let Some((error, at)) = a.last_error {
            e.last_error = Some(error);
            e.last_error_at = Some(utc_millis(at));
        }
    }
    for (host, (concurrency, in_flight)) in load {
        by_host.entry(host.clone()).or_insert(EndpointJson {
            host,
            success_rate: None,
            in_flight,
            concurrency,
            last_error: None,
            last_error_at: None,
        });
    }
    Ok(Json(EndpointList {
        endpoints: by_host.into_values().collect(),
    }))
}
