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
use utoipa::openapi::schema::{ObjectBuilder, Type};

const LIVE_BAD_REQUEST: &str = "LIVE.100011001";
const LIVE_NOT_FOUND: &str = "LIVE.100011004";
const LIVE_INTERNAL: &str = "LIVE.100011500";
const UNAUTHENTICATED: &str = "APIGW.0301";
const WRONG_PROJECT: &str = "APIGW.0302";
const NO_SUCH_API: &str = "APIGW.0101";
const RTC_INVALID: &str = "RTC.00001003";
const RTC_INTERNAL: &str = "RTC.00002001";

/// Every `error_code` Herald sends, for the OpenAPI document.
const ERROR_CODES: [&str; 8] = [
    LIVE_BAD_REQUEST,
    LIVE_NOT_FOUND,
    LIVE_INTERNAL,
    UNAUTHENTICATED,
    WRONG_PROJECT,
    NO_SUCH_API,
    RTC_INVALID,
    RTC_INTERNAL,
];

fn error_code() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ERROR_CODES))
}

/// The error body of both documented APIs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(schema_with = error_code)]
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
    /// 408 `LIVE.100011001` (RTC: `RTC.00001003`): the body did not arrive within the
    /// server's body read timeout.
    #[error("body: was not received within {0:?}")]
    BodyTimeout(std::time::Duration),
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
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, LIVE_BAD_REQUEST),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, LIVE_BAD_REQUEST),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, LIVE_NOT_FOUND),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, UNAUTHENTICATED),
            Self::WrongProject(_) => (StatusCode::FORBIDDEN, WRONG_PROJECT),
            Self::NoSuchApi => (StatusCode::NOT_FOUND, NO_SUCH_API),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, NO_SUCH_API),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, LIVE_INTERNAL),
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
                RTC_INVALID,
                format!("InvalidParameterValue: {e}"),
            ),
            ApiError::BodyTimeout(limit) => respond(
                StatusCode::REQUEST_TIMEOUT,
                RTC_INVALID,
                format!("InvalidParameterValue: {}", ApiError::BodyTimeout(limit)),
            ),
            ApiError::NotFound(what) => respond(
                StatusCode::NOT_FOUND,
                RTC_INVALID,
                format!("InvalidParameterValue: {what} not found"),
            ),
            ApiError::Internal(_) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                RTC_INTERNAL,
                "InternalError".into(),
            ),
            other => other.into_response(),
        }
    }
}
