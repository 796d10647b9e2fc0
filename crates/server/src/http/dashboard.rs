//! The dashboard: sign-in and sign-out, the App Credentials page, and its
//! assets, all compiled into the binary. Pages are static shells; the page's
//! script talks to the same `/v1` API as every other client, authenticated by
//! the session cookie plus a CSRF token. No secret is ever rendered here.

use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::auth::{cookie, same_token, SESSION_COOKIE};
use crate::app::{App, SESSION_HOURS};

const LOGIN_COOKIE: &str = "lk_login";
const LOGIN_HTML: &str = include_str!("../../assets/login.html");
const CREDENTIALS_HTML: &str = include_str!("../../assets/credentials.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

/// Inline script and style are forbidden; everything comes from this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `Secure` when the page was reached over TLS (directly or through a proxy that says so).
fn secure(headers: &HeaderMap) -> &'static str {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok());
    if forwarded.is_some_and(|p| p.eq_ignore_ascii_case("https")) {
        "; Secure"
    } else {
        ""
    }
}

fn set_cookie(res: &mut Response, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn html(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

fn random() -> String {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    URL_SAFE_NO_PAD.encode(crypto::random_bytes(32).unwrap_or_default())
}

/// The sign-in page, with a fresh login CSRF token in a cookie and the form.
fn login_page(headers: &HeaderMap, status: StatusCode, error: &str) -> Response {
    let csrf = random();
    let body = LOGIN_HTML
        .replace("{{csrf}}", &escape(&csrf))
        .replace("{{error}}", &escape(error));
    let mut res = html(status, body);
    set_cookie(
        &mut res,
        format!(
            "{LOGIN_COOKIE}={csrf}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{}",
            secure(headers)
        ),
    );
    res
}

pub async fn root() -> Redirect {
    Redirect::to("/app/credentials")
}

pub async fn login_form(headers: HeaderMap) -> Response {
    login_page(&headers, StatusCode::OK, "")
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
}

pub async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !same_token(expected, &form.csrf) {
        return login_page(
            &headers,
            StatusCode::FORBIDDEN,
            "The sign-in form expired; please try again.",
        );
    }
    let address = peer.ip().to_string();
    if let Err(refused) = super::auth::refuse_if_blocked(&app, &address) {
        return refused.into_response();
    }
    match app.sign_in(&form.token).await {
        Ok(Some((session, _))) => {
            let mut res = Redirect::to("/app/credentials").into_response();
            set_cookie(
                &mut res,
                format!(
                    "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                    session.id.expose_secret(),
                    SESSION_HOURS * 3600,
                    secure(&headers)
                ),
            );
            set_cookie(&mut res, format!("{LOGIN_COOKIE}=; Path=/login; Max-Age=0"));
            res
        }
        Ok(None) => {
            app.auth_failures.failed(&address);
            login_page(
                &headers,
                StatusCode::UNAUTHORIZED,
                "That token is unknown or has been revoked. Use a management token (lk_…).",
            )
        }
        Err(e) => super::error::ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

pub async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        if let Ok(Some((_, csrf))) = app.session(id, None).await {
            if !same_token(&csrf, &form.csrf) {
                return (
                    StatusCode::FORBIDDEN,
                    "The sign-out form expired; reload the page.",
                )
                    .into_response();
            }
            if let Err(e) = app.sign_out(id).await {
                return super::error::ApiError::from(e).into_response();
            }
        }
    }
    let mut res = Redirect::to("/login").into_response();
    set_cookie(
        &mut res,
        format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    res
}

/// The App Credentials page; without a live session, the sign-in page.
pub async fn credentials_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let session = match cookie(&headers, SESSION_COOKIE) {
        Some(id) => app.session(id, None).await.ok().flatten(),
        None => None,
    };
    match session {
        Some((principal, csrf)) => html(
            StatusCode::OK,
            CREDENTIALS_HTML
                .replace("{{csrf}}", &escape(&csrf))
                .replace("{{tenant}}", &escape(&principal.tenant_name)),
        ),
        None => Redirect::to("/login").into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
