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

fn respond(status: StatusCode, error_code: &'static str, error_msg: String) -> Response {
    (
        status,
        Json(ErrorBody {
            error_code,
            error_msg,
        }),
    )
        .into_response()
}

impl ApiError {
    fn log(&self) {
        match self {
            Self::Internal(cause) => tracing::error!(%cause, "internal error"),
            Self::Unauthenticated(reason) => tracing::info!(%reason, "request refused"),
            _ => {}
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let (status, error_code) = self.status_and_code();
        respond(status, error_code, self.to_string())
    }
}

/// An [`ApiError`] answered with the RTC flavour's codes (SPEC §2): 400 and 404
/// `RTC.00001003` (`InvalidParameterValue`), 500 `RTC.00002001` (`InternalError`); the
/// gateway's own codes (401, 403, no such route) are the same in both flavours.
#[derive(Debug)]
pub struct RtcError(pub ApiError);

impl<E: Into<ApiError>> From<E> for RtcError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for RtcError {
    fn into_response(self) -> Response {
        self.0.log();
        match self.0 {
            ApiError::BadRequest(e) => respond(
                StatusCode::BAD_REQUEST,
                "RTC.00001003",
                format!("InvalidParameterValue: {e}"),
            ),
            ApiError::NotFound(what) => respond(
                StatusCode::NOT_FOUND,
                "RTC.00001003",
                format!("InvalidParameterValue: {what} not found"),
            ),
            ApiError::Internal(_) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "RTC.00002001",
                "InternalError".into(),
            ),
            other => other.into_response(),
        }
    }
}
