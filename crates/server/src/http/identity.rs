//! `/v1/tokens`, `/v1/tenants` and `/v1/audit`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use storage::{AuditEntry, TenantRecord, TokenRecord};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, JsonBody, PathParam, Problem, QueryParams};
use super::ListOf;
use crate::app::{encode_cursor, App, PageParams, Principal};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 200; default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

impl PageQuery {
    fn params(self) -> PageParams {
        PageParams {
            limit: self.limit,
            cursor: self.cursor,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// `admin`, `developer` or `viewer`.
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<TokenRecord> for Token {
    fn from(t: TokenRecord) -> Token {
        Token {
            id: t.id,
            name: t.name,
            role: t.role,
            created_at: t.created_at,
            created_by: t.created_by,
            revoked_at: t.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedTokenOut {
    #[serde(flatten)]
    pub info: Token,
    /// The token itself. Shown this once; only its hash is stored.
    pub token: String,
}

#[utoipa::path(post, path = "/v1/tokens", tag = "identity", request_body = CreateToken,
    responses((status = 201, body = IssuedTokenOut), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(app): State<Arc<App>>,
    p: Principal,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<IssuedTokenOut>), ApiError> {
    let issued = app.create_token(&p, &body.name, &body.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedTokenOut {
            token: issued.token.expose_secret().to_string(),
            info: issued.record.into(),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "identity", params(PageQuery),
    responses((status = 200, body = ListOf<Token>), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 400, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(app): State<Arc<App>>,
    p: Principal,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<ListOf<Token>>, ApiError> {
    let page = app.list_tokens(&p, &q.params()).await?;
    Ok(Json(ListOf {
        items: page.items.into_iter().map(Token::from).collect(),
        next_cursor: page.next_cursor.as_deref().map(encode_cursor),
    }))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "identity",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    app.revoke_token(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub is_operator: bool,
    pub created_at: DateTime<Utc>,
}

impl From<TenantRecord> for Tenant {
    fn from(t: TenantRecord) -> Tenant {
        Tenant {
            id: t.id,
            name: t.name,
            is_operator: t.is_operator,
            created_at: t.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedTenant {
    #[serde(flatten)]
    pub tenant: Tenant,
    /// The new tenant's first admin token, shown this once.
    pub admin_token: IssuedTokenOut,
}

#[utoipa::path(post, path = "/v1/tenants", tag = "identity", request_body = CreateTenant,
    responses((status = 201, body = CreatedTenant), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_tenant(
    State(app): State<Arc<App>>,
    p: Principal,
    JsonBody(body): JsonBody<CreateTenant>,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
    let (tenant, issued) = app.create_tenant(&p, &body.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedTenant {
            tenant: tenant.into(),
            admin_token: IssuedTokenOut {
                token: issued.token.expose_secret().to_string(),
                info: issued.record.into(),
            },
        }),
    ))
}

#[utoipa::path(get, path = "/v1/tenants", tag = "identity", params(PageQuery),
    responses((status = 200, body = ListOf<Tenant>), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 400, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_tenants(
    State(app): State<Arc<App>>,
    p: Principal,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<ListOf<Tenant>>, ApiError> {
    let page = app.list_tenants(&p, &q.params()).await?;
    Ok(Json(ListOf {
        items: page.items.into_iter().map(Tenant::from).collect(),
        next_cursor: page.next_cursor.as_deref().map(encode_cursor),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Audit {
    pub id: String,
    pub actor_id: String,
    pub actor_name: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub at: DateTime<Utc>,
    pub source: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<AuditEntry> for Audit {
    fn from(a: AuditEntry) -> Audit {
        Audit {
            id: a.id,
            actor_id: a.actor_id,
            actor_name: a.actor_name,
            action: a.action,
            target_type: a.target_type,
            target_id: a.target_id,
            at: a.at,
            source: a.source,
            details: a.details,
        }
    }
}

#[utoipa::path(get, path = "/v1/audit", tag = "identity", params(PageQuery),
    responses((status = 200, body = ListOf<Audit>), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 400, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_audit(
    State(app): State<Arc<App>>,
    p: Principal,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<ListOf<Audit>>, ApiError> {
    let page = app.list_audit(&p, &q.params()).await?;
    Ok(Json(ListOf {
        items: page.items.into_iter().map(Audit::from).collect(),
        next_cursor: page.next_cursor.as_deref().map(encode_cursor),
    }))
}
