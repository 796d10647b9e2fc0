//! Bearer-token authentication: turns `Authorization: Bearer lk_…` into the
//! application's [`Principal`]. Every `/v1` handler except the OpenAPI
//! document takes a `Principal`, so no handler can forget to authenticate.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts};

use super::error::ApiError;
use crate::app::{App, Principal};

impl FromRequestParts<Arc<App>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthenticated("Send a management token: Authorization: Bearer lk_…")
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthenticated("The Authorization header must be: Bearer lk_…")
            })?;
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        app.authenticate(token, source)
            .await?
            .ok_or_else(|| ApiError::unauthenticated("The token is unknown or has been revoked."))
    }
}
