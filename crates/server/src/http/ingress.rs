//! `POST /hooks/{credential_id}` and `POST /actions/{credential_id}`: the
//! URLs providers call. The raw bytes go to the application's ingress as
//! they arrived; the answer is 2xx only once the event is durably stored.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use services::Inbound;

use super::error::{payload_too_large, ApiError, PathParam, Problem};
use crate::app::{App, IngressError, IngressKind, Received};

/// The header that says why a delivery was refused.
pub const REJECTION_HEADER: &str = "latchkey-rejection";

#[utoipa::path(post, path = "/hooks/{id}", tag = "ingress",
    params(("id" = String, Path, description = "Credential id")),
    request_body(content = String, description = "The provider's webhook, as it sends it"),
    responses(
        (status = 200, description = "Stored (or a repeated delivery, or a handshake answered)"),
        (status = 400, body = Problem), (status = 401, description = "Signature refused; see the Latchkey-Rejection header", body = Problem),
        (status = 404, body = Problem), (status = 413, body = Problem)))]
pub async fn webhook(
    State(app): State<Arc<App>>,
    PathParam(id): PathParam<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(app, IngressKind::Webhook, id, method, uri, headers, body).await
}

#[utoipa::path(post, path = "/actions/{id}", tag = "ingress",
    params(("id" = String, Path, description = "Credential id")),
    request_body(content = String, description = "The provider's interactive callback, as it sends it"),
    responses(
        (status = 200, description = "Stored (or a repeated delivery)"),
        (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 413, body = Problem)))]
pub async fn action(
    State(app): State<Arc<App>>,
    PathParam(id): PathParam<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(app, IngressKind::Action, id, method, uri, headers, body).await
}

async fn receive(
    app: Arc<App>,
    kind: IngressKind,
    id: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Before any lookup or check: a flood to one credential costs little and
    // leaves the other credentials their share.
    if let Err(wait) = app.ingress_limit.check(&id) {
        return ApiError::from(crate::app::AppError::TooManyRequests {
            retry_after: wait,
            message: "Too many deliveries to this credential; retry after the time in Retry-After.",
        })
        .into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return payload_too_large().into_response()
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "The body could not be read.",
            )
            .into_response()
        }
    };
    let inbound = Inbound {
        method: method.to_string(),
        url: format!(
            "{}{}",
            app.public_url,
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
        ),
        headers: headers
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect(),
        body: body.to_vec(),
        now: chrono::Utc::now().timestamp(),
    };
    match app.receive(kind, &id, inbound).await {
        Ok(Received::Stored { event_id }) => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "stored", "event_id": event_id })),
        )
            .into_response(),
        Ok(Received::Duplicate) => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "duplicate" })),
        )
            .into_response(),
        Ok(Received::Handshake { content_type, body }) => {
            let mut res = (StatusCode::OK, body).into_response();
            if let Ok(v) = HeaderValue::from_str(&content_type) {
                res.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            res
        }
        Err(IngressError::NotFound) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "No such credential.").into_response()
        }
        Err(IngressError::Rejected { code, reason }) => {
            let mut res = ApiError::new(StatusCode::UNAUTHORIZED, "signature_rejected", reason)
                .into_response();
            res.headers_mut()
                .insert(REJECTION_HEADER, HeaderValue::from_static(code));
            res.headers_mut().remove(header::WWW_AUTHENTICATE);
            res
        }
        Err(IngressError::Malformed(m)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_payload", m).into_response()
        }
        Err(IngressError::Internal(e)) => ApiError::from(e).into_response(),
    }
}
