//! Media server hooks (SPEC §7): `POST /hooks/{engine}/{secret}`.
//!
//! The secret in the path is the only credential: media servers cannot sign. A hook is
//! answered once the session state it changes is durable, and the tracker does the rest —
//! reading files, ending sessions — after the answer, because media servers wait for it
//! (nginx-rtmp holds a publish until `on_publish` answers) and none of them retries.
//! (On the embedded store, hooks that arrive while a commit is under way share the next
//! one: a burst of hooks costs one flush to disk, not one each.)

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::routing::post;
use herald_core::hook::{self, HookCall};
use herald_core::secrets::token_digest;
use herald_core::source::Engine;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::AppState;
use crate::error::ApiError;

/// Hook bodies are a few hundred bytes; anything near this is not a hook.
const MAX_HOOK_BYTES: usize = 64 * 1024;

const HOOK: &str = "hook";
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/hooks/{engine}/{secret}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_HOOK_BYTES))
}

/// Takes one hook: 200 `{"code": 0}` (what SRS requires; nginx-rtmp and MediaMTX only
/// look at the status), 404 for an unknown engine or secret, 400 for a hook that cannot
/// be read.
async fn receive(
    State(state): State<AppState>,
    Path((engine, secret)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let engine = Engine::parse("engine", &engine).map_err(|_| ApiError::NotFound(HOOK))?;
    let outcome = take(
        &state,
        engine,
        &secret,
        query.as_deref().unwrap_or(""),
        &body,
    )
    .await;
    let label = match &outcome {
        Ok(true) => "accepted",
        Ok(false) => "ignored",
        Err(ApiError::NotFound(_)) => "unknown",
        Err(ApiError::BadRequest(_)) => "refused",
        Err(_) => "failed",
    };
    metrics::counter!("herald_hooks_total", "engine" => engine.as_str(), "outcome" => label)
        .increment(1);
    outcome.map(|_| Json(json!({"code": 0})))
}

/// Applies a hook to its stream's session; false for a call Herald has no use for.
async fn take(
    state: &AppState,
    engine: Engine,
    secret: &str,
    query: &str,
    body: &[u8],
) -> Result<bool, ApiError> {
    if secret.len() > 128 {
        return Err(ApiError::NotFound(HOOK));
    }
    let source = state
        .store
        .find_source_by_secret(&token_digest(secret))
        .await?
        .filter(|s| s.spec.engine == engine)
        .ok_or(ApiError::NotFound(HOOK))?;
    let call = hook::parse(engine, query, body)?;
    if call == HookCall::Ignored {
        return Ok(false);
    }
    let hook = [(source, call)];
    let queued = state
        .store
        .apply_hooks(&hook, OffsetDateTime::now_utc())
        .await?;
    // Even a hook that queued no step may have set a pause's end, which the tracker must
    // now wake for.
    state.recordings.notify_one();
    let [(source, call)] = &hook;
    tracing::info!(source = %source.id, ?call, queued = ?queued, "hook");
    Ok(true)
}
