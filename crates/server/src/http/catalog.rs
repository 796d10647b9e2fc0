//! `/v1/integrations`: the catalog of apps, read-only, for any role.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use domain::catalog::{Apply, FieldSpec, ValidationEndpoint};
use domain::{AuthType, Integration, ServiceRole};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, PathParam, Problem, QueryParams};
use super::ListOf;
use crate::app::{App, Principal};

#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationSummary {
    pub id: String,
    pub name: String,
    pub description: String,
    pub auth_types: Vec<AuthType>,
    pub sends_webhooks: bool,
}

impl IntegrationSummary {
    fn of(i: &Integration) -> IntegrationSummary {
        IntegrationSummary {
            id: i.id.clone(),
            name: i.name.clone(),
            description: i.description.clone(),
            auth_types: i.auth_types(),
            sends_webhooks: i.sends_webhooks(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthTypeDetail {
    #[serde(rename = "type")]
    pub type_: AuthType,
    pub label: String,
    pub fields: Vec<FieldSpec>,
    /// JSON Schema (2020-12) of the fields.
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
    pub apply: Apply,
    pub validation: ValidationEndpoint,
    pub scopes: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationDetail {
    #[serde(flatten)]
    pub summary: IntegrationSummary,
    pub base_url: String,
    pub hosts: Vec<String>,
    pub allow_base_url_override: bool,
    pub webhook_scheme: Option<String>,
    pub auth: Vec<AuthTypeDetail>,
    /// Default service id per role.
    pub defaults: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IntegrationQuery {
    /// Matches the integration's id or name, case-insensitively.
    pub q: Option<String>,
}

#[utoipa::path(get, path = "/v1/integrations", tag = "catalog", params(IntegrationQuery),
    responses((status = 200, body = ListOf<IntegrationSummary>), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_integrations(
    State(app): State<Arc<App>>,
    _p: Principal,
    QueryParams(q): QueryParams<IntegrationQuery>,
) -> Json<ListOf<IntegrationSummary>> {
    let needle = q.q.unwrap_or_default().trim().to_lowercase();
    let matching = app.catalog.integrations_matching(&needle);
    let items = app
        .catalog
        .integrations()
        .filter(|i| matching.contains(&i.id))
        .map(IntegrationSummary::of)
        .collect();
    Json(ListOf {
        items,
        next_cursor: None,
    })
}

#[utoipa::path(get, path = "/v1/integrations/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Integration id, e.g. twilio")),
    responses((status = 200, body = IntegrationDetail), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_integration(
    State(app): State<Arc<App>>,
    _p: Principal,
    PathParam(id): PathParam<String>,
) -> Result<Json<IntegrationDetail>, ApiError> {
    let i = app
        .catalog
        .integration(&id)
        .ok_or(crate::app::AppError::NotFound("integration"))?;
    let auth = i
        .auth_types()
        .into_iter()
        .map(|t| AuthTypeDetail {
            type_: t,
            label: t.label().into(),
            fields: i.fields(t).to_vec(),
            schema: i.fields_schema(t),
            apply: i.api_key.apply.clone(),
            validation: i.api_key.validation.clone(),
            scopes: i.api_key.scopes.clone(),
        })
        .collect();
    Ok(Json(IntegrationDetail {
        summary: IntegrationSummary::of(i),
        base_url: i.base_url.clone(),
        hosts: i.hosts.clone(),
        allow_base_url_override: i.allow_base_url_override,
        webhook_scheme: i.webhooks.as_ref().map(|w| w.scheme.clone()),
        auth,
        defaults: ServiceRole::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), i.defaults.get(*r).to_string()))
            .collect(),
    }))
}
