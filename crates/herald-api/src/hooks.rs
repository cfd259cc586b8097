//! Media server hooks (SPEC §7): `POST /hooks/{engine}/{secret}`.
//!
//! The secret in the path is the only credential: media servers cannot sign. A hook is
//! answered once the session state it changes is durable, and the tracker does the rest —
//! reading files, ending sessions — after the answer, because media servers wait for it
//! (nginx-rtmp holds a publish until `on_publish` answers) and none of them retries.
//! Hooks that arrive while a commit is under way share the next one ([`HookQueue`]): a
//! burst of hooks costs one flush to disk, not one each.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::routing::post;
use herald_core::hook::{self, HookCall};
use herald_core::secrets::token_digest;
use herald_core::source::{Engine, RecordingSource};
use herald_store::Store;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::AppState;
use crate::error::ApiError;

/// Hook bodies are a few hundred bytes; anything near this is not a hook.
const MAX_HOOK_BYTES: usize = 64 * 1024;

const HOOK: &str = "hook";
/// Most hooks one commit applies.
const MOST_PER_COMMIT: usize = 256;

/// A hook waiting for the commit that applies it.
struct Pending {
    source: RecordingSource,
    call: HookCall,
    /// How many steps it queued, or why the commit failed.
    applied: oneshot::Sender<Result<usize, String>>,
}

/// Where hooks wait for their commit. One task commits: it takes every hook waiting (up to
/// [`MOST_PER_COMMIT`]) into one transaction, answers each once it is durable, then wakes
/// the tracker. A lone hook is committed at once, as it would be without the queue.
#[derive(Clone)]
pub struct HookQueue(mpsc::Sender<Pending>);

impl HookQueue {
    /// Starts the committing task; it ends when the last queue handle is dropped.
    pub fn start(store: Arc<dyn Store>, tracker: Arc<Notify>) -> Self {
        let (tx, rx) = mpsc::channel(4 * MOST_PER_COMMIT);
        tokio::spawn(commit_hooks(store, tracker, rx));
        Self(tx)
    }

    /// Applies a hook; returns once its change is durable.
    async fn apply(&self, source: RecordingSource, call: HookCall) -> Result<usize, ApiError> {
        let (applied, answer) = oneshot::channel();
        let pending = Pending {
            source,
            call,
            applied,
        };
        self.0
            .send(pending)
            .await
            .map_err(|_| ApiError::internal("the hook committer has stopped"))?;
        answer
            .await
            .map_err(|_| ApiError::internal("the hook committer has stopped"))?
            .map_err(ApiError::Internal)
    }
}

async fn commit_hooks(
    store: Arc<dyn Store>,
    tracker: Arc<Notify>,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut batch = Vec::with_capacity(MOST_PER_COMMIT);
    while rx.recv_many(&mut batch, MOST_PER_COMMIT).await > 0 {
        let hooks: Vec<(RecordingSource, HookCall)> = batch
            .iter()
            .map(|p| (p.source.clone(), p.call.clone()))
            .collect();
        let result = store.apply_hooks(&hooks, OffsetDateTime::now_utc()).await;
        // Even a hook that queued no step may have set a pause's end, which the tracker
        // must now wake for.
        tracker.notify_one();
        match result {
            Ok(queued) => {
                for (pending, n) in batch.drain(..).zip(queued) {
                    // The client may have gone; its hook is applied all the same.
                    let _ = pending.applied.send(Ok(n));
                }
            }
            Err(e) => {
                let cause = e.to_string();
                for pending in batch.drain(..) {
                    let _ = pending.applied.send(Err(cause.clone()));
                }
            }
        }
    }
}

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
    let source_id = source.id.clone();
    let log = format!("{call:?}");
    let queued = state.hooks.apply(source, call).await?;
    tracing::info!(source = %source_id, call = %log, queued, "hook");
    Ok(true)
}
