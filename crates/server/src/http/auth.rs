//! Authentication at the edge: `Authorization: Bearer lk_…` for programs, or
//! the dashboard's session cookie for people. Every `/v1` handler except the
//! OpenAPI document authenticates through an extractor: most take a
//! `Principal`; the read of one credential takes a `Caller`, whose bearer
//! token only `Bearer::authenticate` can use, so that read can look the
//! token up together with the credential. A cookie-authenticated request
//! that changes state must echo the session's CSRF token in
//! `X-CSRF-Token`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts, HeaderMap, Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::{App, AppError, AppResult, Principal};

pub const SESSION_COOKIE: &str = "lk_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of a cookie, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether two tokens are equal, in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Who is calling, as far as the edge can tell before reading the store: a
/// bearer token still to be looked up, or the principal of a session
/// cookie (looked up, CSRF checked). A handler that takes this instead of
/// a [`Principal`] can fold the token's lookup into its own read; the token
/// is usable only through [`Bearer::authenticate`], which refuses and
/// counts what its lookup does not find.
pub enum Caller {
    Bearer(Bearer),
    Session(Principal),
}

/// A bearer token as sent, not yet looked up.
pub struct Bearer {
    token: SecretString,
    source: Option<String>,
    address: String,
}

impl Bearer {
    /// Runs `lookup` with the token and the caller's address. What it does
    /// not find (`None`: a token unknown, revoked, malformed, or of a role
    /// this version does not know) is refused with 401 and counted as a
    /// failed authentication for the address.
    pub async fn authenticate<T, F, Fut>(self, app: &App, lookup: F) -> Result<T, ApiError>
    where
        F: FnOnce(SecretString, Option<String>) -> Fut,
        Fut: Future<Output = AppResult<Option<T>>>,
    {
        match lookup(self.token, self.source).await? {
            Some(found) => Ok(found),
            None => {
                app.auth_failures.failed(&self.address);
                Err(ApiError::unauthenticated(
                    "The token is unknown or has been revoked.",
                ))
            }
        }
    }

    /// The token's principal, as the [`Principal`] extractor finds it.
    pub async fn into_principal(self, app: &App) -> Result<Principal, ApiError> {
        self.authenticate(app, |token, source| async move {
            app.authenticate(token.expose_secret(), source).await
        })
        .await
    }
}

impl FromRequestParts<Arc<App>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, app).await? {
            Caller::Session(principal) => Ok(principal),
            Caller::Bearer(bearer) => bearer.into_principal(app).await,
        }
    }
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        let address = source.clone().unwrap_or_default();
        refuse_if_blocked(app, &address)?;
        let failed = |message: &'static str| {
            app.auth_failures.failed(&address);
            ApiError::unauthenticated(message)
        };
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| failed("The Authorization header must be: Bearer lk_…"))?;
            return Ok(Caller::Bearer(Bearer {
                token: SecretString::from(token.to_string()),
                source,
                address,
            }));
        }
        let Some(session) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(ApiError::unauthenticated(
                "Send a management token: Authorization: Bearer lk_…",
            ));
        };
        let (principal, csrf) = app
            .session(session, source)
            .await?
            .ok_or_else(|| failed("The session has ended; sign in again."))?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !same_token(sent, &csrf) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "This change needs the page's X-CSRF-Token header; reload the page and try again.",
                ));
            }
        }
        Ok(Caller::Session(principal))
    }
}

/// 429 for an address that failed to authenticate too often lately: it may
/// not try again, with any token, until its window ends.
pub fn refuse_if_blocked(app: &App, address: &str) -> Result<(), ApiError> {
    match app.auth_failures.blocked(address) {
        Some(wait) => Err(AppError::TooManyRequests {
            retry_after: wait,
            message: "Too many failed sign-ins or bad tokens from this address; wait for the time in Retry-After, then use a valid token.",
        }
        .into()),
        None => Ok(()),
    }
}
