//! The HTTP edge: routes, request/response shapes, authentication, the one
//! error type, and the OpenAPI document generated from the same route
//! declarations (so the two cannot drift). Handlers call the application
//! layer only; the HTTP layer never touches storage or keys.

pub mod auth;
pub mod catalog;
pub mod credentials;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod identity;
pub mod ingress;
pub mod keys;
pub mod rfc3339;
pub mod services;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::app::App;
use error::ApiError;

/// Largest request body the API accepts.
pub const MAX_BODY: usize = 1024 * 1024;

/// Every list in the API: a page of items and the cursor of the next page.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListOf<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Latchkey", description = "App Credentials: store, validate and use third-party app credentials."),
    modifiers(&BearerAuth),
    tags(
        (name = "credentials", description = "App credentials"),
        (name = "catalog", description = "Integrations"),
        (name = "services", description = "Config services: built-in and custom"),
        (name = "events", description = "Received webhooks and action callbacks"),
        (name = "ingress", description = "The URLs providers call"),
        (name = "identity", description = "Tenants, management tokens, the audit log and master keys"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("lk_…")
                    .build(),
            ),
        );
    }
}

/// The API routes and the OpenAPI document describing exactly them (served
/// after [`conform`]).
pub fn api() -> (Router<Arc<App>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(
            credentials::create_credential,
            credentials::list_credentials
        ))
        .routes(routes!(credentials::validate_credential))
        .routes(routes!(credentials::export_credentials))
        .routes(routes!(credentials::import_credentials))
        .routes(routes!(
            credentials::get_credential,
            credentials::update_credential,
            credentials::delete_credential
        ))
        .routes(routes!(credentials::revalidate_credential))
        .routes(routes!(credentials::list_user_mappings))
        .routes(routes!(
            credentials::put_user_mapping,
            credentials::delete_user_mapping
        ))
        .routes(routes!(catalog::list_integrations))
        .routes(routes!(catalog::get_integration))
        .routes(routes!(services::list_services, services::create_service))
        .routes(routes!(
            services::get_service,
            services::update_service,
            services::delete_service
        ))
        .routes(routes!(events::list_events))
        .routes(routes!(events::get_event))
        .routes(routes!(ingress::webhook))
        .routes(routes!(ingress::action))
        .routes(routes!(identity::create_token, identity::list_tokens))
        .routes(routes!(identity::revoke_token))
        .routes(routes!(identity::create_tenant, identity::list_tenants))
        .routes(routes!(identity::list_audit))
        .routes(routes!(keys::key_status))
        .routes(routes!(keys::rotate_key))
        .split_for_parts()
}

/// Makes the document say what the handlers really send, where the route
/// declarations cannot say it one by one:
/// - every error is a `Problem`, sent as `application/problem+json`;
/// - every operation with a JSON body answers 415 when it is not JSON;
/// - a schema that is a part of an `allOf` (a serde `flatten`, or the fields
///   of an internally tagged variant next to its `kind`) cannot forbid other
///   properties: the whole object always has some (`deny_unknown_fields`
///   applies to requests, not to these composed responses).
fn conform(spec: &utoipa::openapi::OpenApi) -> serde_json::Value {
    const PROBLEM: &str = "#/components/schemas/Problem";
    let mut doc = serde_json::to_value(spec).expect("the document serializes");
    let problem = serde_json::json!({ "schema": { "$ref": PROBLEM } });
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for item in paths.values_mut().filter_map(|i| i.as_object_mut()) {
            for op in item.values_mut().filter_map(|o| o.as_object_mut()) {
                let has_json_body = op
                    .get("requestBody")
                    .and_then(|b| b.pointer("/content/application~1json"))
                    .is_some();
                let has_query = op
                    .get("parameters")
                    .and_then(|p| p.as_array())
                    .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
                let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut())
                else {
                    continue;
                };
                for res in responses.values_mut() {
                    let Some(content) = res.get_mut("content").and_then(|c| c.as_object_mut())
                    else {
                        continue;
                    };
                    let is_problem = content
                        .get("application/json")
                        .and_then(|c| c.pointer("/schema/$ref"))
                        .and_then(|r| r.as_str())
                        == Some(PROBLEM);
                    if is_problem {
                        let body = content.remove("application/json").expect("checked");
                        content.insert("application/problem+json".into(), body);
                    }
                }
                // `QueryParams` refuses a value holding a NUL, naming it.
                if has_query && !responses.contains_key("422") {
                    responses.insert(
                        "422".into(),
                        serde_json::json!({
                            "description": "A query parameter is invalid; errors names it",
                            "content": { "application/problem+json": problem.clone() },
                        }),
                    );
                }
                if has_json_body && !responses.contains_key("415") {
                    responses.insert(
                        "415".into(),
                        serde_json::json!({
                            "description": "The body is not sent as application/json",
                            "content": { "application/problem+json": problem.clone() },
                        }),
                    );
                }
            }
        }
    }
    let mut in_all_of = std::collections::BTreeSet::new();
    all_of_refs(&doc, &mut in_all_of);
    for name in in_all_of {
        if let Some(schema) = doc
            .pointer_mut(&format!("/components/schemas/{name}"))
            .and_then(|s| s.as_object_mut())
        {
            schema.remove("additionalProperties");
        }
    }
    doc
}

/// The component names `$ref`erenced directly by an `allOf` anywhere in `v`.
fn all_of_refs(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(parts) = map.get("allOf").and_then(|a| a.as_array()) {
                for r in parts.iter().filter_map(|p| p.get("$ref")?.as_str()) {
                    if let Some(name) = r.strip_prefix("#/components/schemas/") {
                        out.insert(name.to_string());
                    }
                }
            }
            map.values().for_each(|v| all_of_refs(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| all_of_refs(v, out)),
        _ => {}
    }
}

pub fn router(app: Arc<App>) -> Router {
    let (api, openapi) = api();
    let spec = Arc::new(conform(&openapi));
    Router::new()
        .merge(api)
        .route(
            "/v1/openapi.json",
            get(move || async move { Json(spec.as_ref().clone()) }),
        )
        .route("/", get(dashboard::root))
        .route("/login", get(dashboard::login_form).post(dashboard::login))
        .route("/logout", axum::routing::post(dashboard::logout))
        .route("/app/credentials", get(dashboard::credentials_page))
        .route("/assets/app.js", get(dashboard::app_js))
        .route("/assets/app.css", get(dashboard::app_css))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(security_headers))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(dashboard::CONTENT_SECURITY_POLICY),
    );
    res
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "No such route.")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This route does not take that method.",
    )
}

/// Prometheus metrics of this process.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut res = app.counters.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}

/// Reads `If-Match: "3"` (or `3`, or a weak `W/"3"`).
pub(crate) fn if_match(headers: &axum::http::HeaderMap) -> Result<i64, ApiError> {
    let raw = headers.get(header::IF_MATCH).ok_or_else(|| {
        ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "Send If-Match with the record's version (its ETag) so a concurrent change is not overwritten.",
        )
    })?;
    raw.to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_if_match",
                "If-Match must be the record's ETag, e.g. \"3\".",
            )
        })
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when storage answers.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.store.tenant_count().await {
        Ok(_) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "unavailable" })),
            )
                .into_response()
        }
    }
}
