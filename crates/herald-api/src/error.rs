//! The API's one error type: the only place an internal failure becomes an HTTP answer.
//!
//! Each variant maps to a documented `error_code`; internal details are logged here and
//! never sent, so a 500 carries a code and a generic message, not a panic or a trace.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::field::FieldError;
use herald_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The error body of both documented APIs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// e.g. `LIVE.100011001`.
    pub error_code: &'static str,
    /// Says what was wrong; for a bad field, names the field and the rule.
    pub error_msg: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `LIVE.100011001`.
    #[error("{0}")]
    BadRequest(#[from] FieldError),
    /// 404 `LIVE.100011004`.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 401 `APIGW.0301`: missing, malformed, unknown or wrongly signed credentials.
    #[error("Incorrect IAM authentication information: {0}")]
    Unauthenticated(String),
    /// 403 `APIGW.0302`: valid credentials of another project.
    #[error("the credential is not authorized for project {0}")]
    WrongProject(String),
    /// 404 `APIGW.0101`: no such route.
    #[error("the API does not exist")]
    NoSuchApi,
    /// 405 `APIGW.0101`: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 500 `LIVE.100011500`; the cause is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl ApiError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "LIVE.100011001"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "LIVE.100011004"),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "APIGW.0301"),
            Self::WrongProject(_) => (StatusCode::FORBIDDEN, "APIGW.0302"),
            Self::NoSuchApi => (StatusCode::NOT_FOUND, "APIGW.0101"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "APIGW.0101"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "LIVE.100011500"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error_code) = self.status_and_code();
        match &self {
            Self::Internal(cause) => tracing::error!(%cause, "internal error"),
            Self::Unauthenticated(reason) => tracing::info!(%reason, "request refused"),
            _ => {}
        }
        let body = ErrorBody {
            error_code,
            error_msg: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}
