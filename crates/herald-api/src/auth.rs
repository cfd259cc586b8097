//! Authentication of the management and ingest APIs (SPEC §3).
//!
//! A middleware identifies the caller by `X-Auth-Token` or by an `SDK-HMAC-SHA256`
//! signature, and hands the handler a [`Caller`]. Everything the headers can settle is
//! settled before the (bounded) body is read; only the signature needs the body. Credentials are looked
//! up in the store on every request, so keys created by `herald credentials create` while
//! the server runs work at once, and revoked ones stop at once. (The embedded store
//! remembers the tokens it found, and learns of revocations through a stamp file that the
//! CLI replaces: see herald-store's `token_cache`.)

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_core::field::FieldError;
use herald_core::project::ProjectId;
use herald_core::sdk_auth::{self, Authorization, WireRequest};
use herald_core::secrets::token_digest;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use crate::AppState;
use crate::error::{ApiError, RtcError};
use crate::server::BodyReadTimedOut;

/// Request bodies above this are refused (by the body limit layer, see [`explain_body_limit`]).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

const AUTH_TOKEN: &str = "x-auth-token";
const PROJECT_ID: &str = "x-project-id";

/// Who is calling: the project their credential belongs to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub project: ProjectId,
}

impl Caller {
    /// The project of a `/v1/{project_id}/…` path, if it is the caller's own.
    pub fn authorize(&self, path_project: &str) -> Result<ProjectId, ApiError> {
        if path_project == self.project.as_str() {
            Ok(self.project.clone())
        } else {
            Err(ApiError::WrongProject(path_project.to_owned()))
        }
    }
}

/// Credentials listed in the config file, beside those in the store.
#[derive(Debug, Default)]
pub struct StaticCredentials {
    access_keys: HashMap<String, (ProjectId, SecretString)>,
    /// Keyed by the token's SHA-256, like the store, so lookups work the same way.
    tokens: HashMap<String, ProjectId>,
}

impl StaticCredentials {
    pub fn add_access_key(
        &mut self,
        project: ProjectId,
        access_key: String,
        secret_key: SecretString,
    ) {
        self.access_keys.insert(access_key, (project, secret_key));
    }

    pub fn add_token(&mut self, project: ProjectId, token: &SecretString) {
        self.tokens
            .insert(token_digest(token.expose_secret()), project);
    }
}

/// A refusal in the flavour of the path: the RTC paths (`/v2/…`) carry the RTC codes.
fn refusal(uri: &Uri, error: ApiError) -> Response {
    if uri.path().starts_with("/v2/") {
        RtcError(error).into_response()
    } else {
        error.into_response()
    }
}

fn body_too_large() -> ApiError {
    ApiError::BadRequest(FieldError::new("body", "must be at most 1 MiB"))
}

/// tower-http's `RequestBodyLimitLayer` bounds every body to [`MAX_BODY_BYTES`]; a body
/// that declares more is answered 413 at once, which the APIs turn into the 400 naming
/// `body` that SPEC §4 documents. (A body that grows past the bound unannounced fails
/// while [`authenticate`] reads it, with the same answer.)
pub async fn explain_body_limit(uri: Uri, response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        refusal(&uri, body_too_large())
    } else {
        response
    }
}

/// Middleware: the caller, from the headers alone; then the (bounded) body; then, for a
/// signed request, the signature over it; then the handler.
///
/// A caller without valid credentials is refused before a byte of the body is read: an
/// unauthenticated client cannot make the server hold a megabyte, or wait for one.
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let uri = request.uri().clone();
    admit(&state, request, next)
        .await
        .unwrap_or_else(|e| refusal(&uri, e))
}

async fn admit(state: &AppState, request: Request, next: Next) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let claimant = identify(state, &parts.method, &parts.uri, &parts.headers).await?;
    let project = claimant.project();
    if let Some(claimed) = parts.headers.get(PROJECT_ID)
        && claimed.as_bytes() != project.as_str().as_bytes()
    {
        return Err(ApiError::WrongProject(
            String::from_utf8_lossy(claimed.as_bytes()).into_owned(),
        ));
    }
    // The body limit layer in front of this bounds the body already; bounding the read
    // too keeps the bound wherever this middleware is mounted.
    let body: Bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(body_unread)?;
    let caller = claimant.verify(&parts.method, &parts.uri, &parts.headers, &body)?;
    let mut request = Request::from_parts(parts, Body::from(body));
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Why a body could not be read: too slow (the server's body read timeout), or too big.
fn body_unread(e: axum::Error) -> ApiError {
    match BodyReadTimedOut::find(&e) {
        Some(timed_out) => ApiError::BodyTimeout(timed_out.0),
        None => body_too_large(),
    }
}

/// A caller known from the headers: by a token, done; by an access key, the key's secret
/// to check the signature with once the body is there.
enum Claimant {
    Token(Caller),
    AccessKey {
        project: ProjectId,
        secret_key: SecretString,
    },
}

impl Claimant {
    fn project(&self) -> &ProjectId {
        match self {
            Self::Token(caller) => &caller.project,
            Self::AccessKey { project, .. } => project,
        }
    }

    fn verify(
        self,
        method: &axum::http::Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Caller, ApiError> {
        let (project, secret_key) = match self {
            Self::Token(caller) => return Ok(caller),
            Self::AccessKey {
                project,
                secret_key,
            } => (project, secret_key),
        };
        let authorization = authorization(headers)?;
        let wire_headers = wire_headers(headers);
        let wire = WireRequest {
            method: method.as_str(),
            raw_path: uri.path(),
            raw_query: uri.query().unwrap_or(""),
            headers: &wire_headers,
            body,
        };
        sdk_auth::verify(
            &wire,
            &authorization,
            secret_key.expose_secret(),
            OffsetDateTime::now_utc(),
        )
        .map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
        Ok(Caller { project })
    }
}

fn wire_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn authorization(headers: &HeaderMap) -> Result<Authorization<'_>, ApiError> {
    let Some(authorization) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthenticated(
            "send X-Auth-Token or an SDK-HMAC-SHA256 Authorization header".into(),
        ));
    };
    let authorization = authorization
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("the Authorization header is not ASCII".into()))?;
    Authorization::parse(authorization).map_err(|e| ApiError::Unauthenticated(e.to_string()))
}

/// Everything about the credentials that the headers can tell: a token is checked; an
/// access key is looked up, and the date and signed headers are checked, so that only a
/// request from a known key, dated now, waits for its body.
async fn identify(
    state: &AppState,
    method: &axum::http::Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Claimant, ApiError> {
    if let Some(token) = headers.get(AUTH_TOKEN) {
        let digest = token_digest(&String::from_utf8_lossy(token.as_bytes()));
        let project = match state.credentials.tokens.get(&digest) {
            Some(project) => Some(project.clone()),
            None => {
                state
                    .store
                    .find_token_project(&digest, OffsetDateTime::now_utc())
                    .await?
            }
        };
        return project
            .map(|project| Claimant::Token(Caller { project }))
            .ok_or_else(|| ApiError::Unauthenticated("unknown, revoked or expired token".into()));
    }
    let auth = authorization(headers)?;
    let (project, secret_key) = match state.credentials.access_keys.get(auth.access_key) {
        Some((project, sk)) => (project.clone(), sk.clone()),
        None => match state.store.find_access_key(auth.access_key).await? {
            Some(key) => (key.project_id, key.secret_key),
            // Same words as a bad signature: whether an access key exists is not told.
            None => {
                return Err(ApiError::Unauthenticated(
                    sdk_auth::AuthError::SignatureMismatch.to_string(),
                ));
            }
        },
    };
    let wire_headers = wire_headers(headers);
    let head = WireRequest {
        method: method.as_str(),
        raw_path: uri.path(),
        raw_query: uri.query().unwrap_or(""),
        headers: &wire_headers,
        body: &[],
    };
    sdk_auth::check_head(&head, &auth, OffsetDateTime::now_utc())
        .map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
    Ok(Claimant::AccessKey {
        project,
        secret_key,
    })
}
