//! `/v1/services`: built-in services and the tenant's own.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use domain::{ServiceDef, ServiceRole};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, JsonBody, PathParam, Problem, QueryParams};
use super::{if_match, ListOf};
use crate::app::{App, Principal, ServiceInput};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ServiceQuery {
    /// Only services that fit this integration.
    pub integration: Option<String>,
    /// Only services of this role.
    pub role: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Service {
    #[serde(flatten)]
    pub def: ServiceDef,
    /// Built-in services come with the catalog and cannot be changed.
    pub builtin: bool,
    pub version: i64,
}

impl From<crate::app::Service> for Service {
    fn from(s: crate::app::Service) -> Service {
        Service {
            def: s.def,
            builtin: s.builtin,
            version: s.version,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceBody {
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub description: String,
    /// Integration ids it fits, or `["*"]`.
    pub integrations: Vec<String>,
    /// The spec: `{ "kind": "json_events", … }`, `{ "kind": "script", "source": "…" }`, …
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

impl ServiceBody {
    fn input(self) -> ServiceInput {
        ServiceInput {
            name: self.name,
            role: self.role,
            description: self.description,
            integrations: self.integrations,
            spec: self.spec,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    /// Change it even though credentials use it.
    #[serde(default)]
    pub force: bool,
}

#[utoipa::path(get, path = "/v1/services", tag = "services", params(ServiceQuery),
    responses((status = 200, body = ListOf<Service>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_services(
    State(app): State<Arc<App>>,
    p: Principal,
    QueryParams(q): QueryParams<ServiceQuery>,
) -> Result<Json<ListOf<Service>>, ApiError> {
    let role = match q.role.as_deref() {
        None => None,
        Some(r) => Some(ServiceRole::parse(r).ok_or_else(|| {
            ApiError::validation(vec![domain::FieldError::new(
                "role",
                "invalid",
                "role is one of token_validation, user_id_mapper, action_callback_parser, webhook_parser, webhook_event_verification.",
            )])
        })?),
    };
    if let Some(i) = q.integration.as_deref() {
        if app.catalog.integration(i).is_none() {
            return Err(ApiError::validation(vec![domain::FieldError::new(
                "integration",
                "unknown",
                format!("There is no integration {i:?}."),
            )]));
        }
    }
    let items = app
        .list_services(&p, q.integration.as_deref(), role)
        .await?;
    Ok(Json(ListOf {
        items: items.into_iter().map(Service::from).collect(),
        next_cursor: None,
    }))
}

#[utoipa::path(post, path = "/v1/services", tag = "services", request_body = ServiceBody,
    responses((status = 201, body = Service), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_service(
    State(app): State<Arc<App>>,
    p: Principal,
    JsonBody(body): JsonBody<ServiceBody>,
) -> Result<(StatusCode, Json<Service>), ApiError> {
    let s = app.create_service(&p, body.input()).await?;
    Ok((StatusCode::CREATED, Json(s.into())))
}

#[utoipa::path(get, path = "/v1/services/{id}", tag = "services",
    params(("id" = String, Path, description = "Service id")),
    responses((status = 200, body = Service), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_service(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam(id): PathParam<String>,
) -> Result<Json<Service>, ApiError> {
    Ok(Json(app.get_service(&p, &id).await?.into()))
}

#[utoipa::path(put, path = "/v1/services/{id}", tag = "services",
    params(("id" = String, Path, description = "Service id"),
           ("If-Match" = String, Header, description = "The version being replaced"), ForceQuery),
    request_body = ServiceBody,
    responses((status = 200, body = Service), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "Credentials use it (listed), or the name is taken", body = Problem),
              (status = 412, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem),
              (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn update_service(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam(id): PathParam<String>,
    QueryParams(q): QueryParams<ForceQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ServiceBody>,
) -> Result<Json<Service>, ApiError> {
    if app.catalog.service(&id).is_some() {
        // Say what is wrong first: a built-in cannot change, whatever its version.
        return Err(crate::app::AppError::Forbidden(
            "Built-in services cannot be changed; create your own instead.",
        )
        .into());
    }
    let version = if_match(&headers)?;
    Ok(Json(
        app.update_service(&p, &id, version, q.force, body.input())
            .await?
            .into(),
    ))
}

#[utoipa::path(delete, path = "/v1/services/{id}", tag = "services",
    params(("id" = String, Path, description = "Service id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, description = "Credentials use it (listed)", body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_service(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_service(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
