//! `GET /v3/auth/projects`: the projects the caller's credential may use, in the shape of
//! the Huawei Cloud IAM call of the same path. A client that holds only a token (the web
//! console) learns from it which project its `/v1/{project_id}/…` paths name.

use axum::Json;
use axum::extract::Extension;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ErrorBody;

#[derive(Debug, Serialize, ToSchema)]
pub struct Project {
    id: String,
    name: String,
    enabled: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Projects {
    /// Always one: a Herald credential belongs to one project.
    projects: Vec<Project>,
}

/// The project of the credential the request is made with.
#[utoipa::path(
    get, path = "/v3/auth/projects", tag = "auth",
    responses((status = 200, body = Projects), (status = 401, body = ErrorBody)),
    security(("aksk" = []), ("token" = [])),
)]
pub async fn projects(Extension(caller): Extension<Caller>) -> Json<Projects> {
    let id = caller.project.as_str().to_owned();
    Json(Projects {
        projects: vec![Project {
            name: id.clone(),
            id,
            enabled: true,
        }],
    })
}
