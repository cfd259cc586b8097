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
    let steps: usize = queued.iter().sum();
    tracing::info!(
        source = %source.id,
        "hook: {}; {}",
        describe(call),
        match steps {
            0 => "nothing new to report (a repeated hook, or the session goes on)".to_owned(),
            1 => "1 recording event queued".to_owned(),
            n => format!("{n} recording events queued"),
        }
    );
    Ok(true)
}

/// A hook as a log line says it: what happened to which stream.
fn describe(call: &HookCall) -> String {
    match call {
        HookCall::Publish(s) => format!("{}/{} published", s.app, s.stream),
        HookCall::Unpublish(s) => format!("{}/{} unpublished", s.app, s.stream),
        HookCall::FileStarted { stream: s, file } => {
            format!("{}/{} began file {}", s.app, s.stream, file.joined())
        }
        HookCall::FileDone { stream: s, file } => {
            format!("{}/{} finished file {}", s.app, s.stream, file.joined())
        }
        HookCall::Ignored => "a call Herald has no use for".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use herald_core::hook::{HookFile, StreamKey};

    use super::*;

    /// A hook's log line reads as a sentence, not as Rust's `Debug` of the call.
    #[test]
    fn hook_log_lines_are_readable() {
        let stream = StreamKey {
            app: "live".into(),
            stream: "cam1".into(),
        };
        let done = HookCall::FileDone {
            stream: stream.clone(),
            file: HookFile {
                base: None,
                path: "/srv/rec/cam1.flv".into(),
            },
        };
        assert_eq!(describe(&done), "live/cam1 finished file /srv/rec/cam1.flv");
        assert_eq!(describe(&HookCall::Publish(stream)), "live/cam1 published");
        assert!(!describe(&done).contains('{'));
    }
}
