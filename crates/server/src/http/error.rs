//! The one HTTP error type. Every failure leaves the server as an RFC 9457
//! problem document with a stable `code`; internal causes are logged with a
//! reference id and never shown. Messages never carry request values, so a
//! secret sent in the wrong place cannot come back in an error.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::FieldError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppError;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    /// Stable, machine-readable reason.
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For validation problems: every invalid field at once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For a name clash: the id of the credential that has the name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing_id: Option<String>,
    /// For a version mismatch: the current version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
    /// For a record in use: the credentials that use it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialRef>,
}

/// A credential named in a problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialRef {
    pub id: String,
    pub name: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    problem: Box<Problem>,
    /// Seconds for a `Retry-After` header (429).
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            problem: Box::new(Problem {
                type_: format!("https://latchkey.dev/problems/{code}"),
                title: status.canonical_reason().unwrap_or("Error").to_string(),
                status: status.as_u16(),
                code: code.to_string(),
                detail: Some(detail.into()),
                errors: Vec::new(),
                existing_id: None,
                current_version: None,
                credentials: Vec::new(),
            }),
            retry_after: None,
        }
    }

    pub fn validation(errors: Vec<FieldError>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "Some fields are invalid; each entry of errors says what to fix.",
        );
        e.problem.errors = errors;
        e
    }

    pub fn unauthenticated(detail: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    fn bad_request(code: &str, errors: Vec<FieldError>, detail: &str) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, code, detail);
        e.problem.errors = errors;
        e
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        match e {
            AppError::Validation(errors) => ApiError::validation(errors),
            AppError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("No such {what}."),
            ),
            AppError::Forbidden(why) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", why),
            AppError::NameTaken { name, existing_id } => {
                let mut err = ApiError::new(
                    StatusCode::CONFLICT,
                    "name_taken",
                    format!("A credential named {name:?} already exists; choose another name."),
                );
                err.problem.errors = vec![FieldError::new(
                    "name",
                    "taken",
                    "This name is already used.",
                )];
                err.problem.existing_id = Some(existing_id);
                err
            }
            AppError::Conflict(detail) => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
            AppError::VersionMismatch { expected, current } => {
                let mut err = ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "version_mismatch",
                    format!(
                        "The record changed since version {expected}; it is at version {current}. Fetch it again and retry."
                    ),
                );
                err.problem.current_version = Some(current);
                err
            }
            AppError::InUse(users) => {
                let mut err = ApiError::new(
                    StatusCode::CONFLICT,
                    "in_use",
                    format!(
                        "{} credential(s) use this service; move them to another service first, or change it with force=true.",
                        users.len()
                    ),
                );
                err.problem.credentials = users
                    .into_iter()
                    .map(|(id, name)| CredentialRef { id, name })
                    .collect();
                err
            }
            AppError::TooManyRequests {
                retry_after,
                message,
            } => {
                let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
                err.retry_after = Some(retry_after.as_secs().max(1));
                err
            }
            AppError::ImportFile { code, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            AppError::ImportConflict(clashes) => {
                let mut err = ApiError::new(
                    StatusCode::CONFLICT,
                    "name_conflict",
                    format!(
                        "{} credential(s) in the file have names this tenant already uses; nothing was imported. \
                         Import again with on_conflict \"override\" (replace them) or \"create_new\" (import under new names).",
                        clashes.len()
                    ),
                );
                err.problem.credentials = clashes
                    .into_iter()
                    .map(|(name, id)| CredentialRef { id, name })
                    .collect();
                err
            }
            AppError::TokenRejected(reason) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "token_rejected", reason)
            }
            AppError::ProviderUnreachable(reason) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "provider_unreachable",
                format!("{reason}. Save with \"validate\": false to store it unverified."),
            ),
            AppError::Internal(cause) => {
                let reference = domain::ids::new_id("err");
                tracing::error!(reference, error = %format!("{cause:#}"), "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("Something went wrong on our side (reference {reference})."),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(&*self.problem)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// Removes values that serde quotes in its messages (`invalid type: string
/// "…"`), keeping the field names a client needs to fix its request.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            for c2 in chars.by_ref() {
                if c2 == '"' {
                    break;
                }
            }
            out.push_str("…\"");
        }
    }
    for prefix in [
        "integer `",
        "floating point `",
        "unknown variant `",
        "character `",
    ] {
        while let Some(start) = out.find(prefix) {
            let from = start + prefix.len();
            let Some(len) = out[from..].find('`') else {
                break;
            };
            out.replace_range(
                start..from + len + 1,
                &format!("{}…", &prefix[..prefix.len() - 1]),
            );
        }
    }
    out
}

/// The JSON body extractor of the API: like `axum::Json`, with its failures as problems.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the body as JSON with Content-Type: application/json.",
        ),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("malformed_json", Vec::new(), "The body is not valid JSON.")
        }
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            let message = redact(text.rsplit_once("body: ").map(|(_, m)| m).unwrap_or(&text));
            let errors = match message.split_once("unknown field `") {
                Some((_, rest)) => {
                    let field = rest.split('`').next().unwrap_or("");
                    vec![FieldError::new(
                        field,
                        "unknown_field",
                        format!("Remove {field:?}: {message}"),
                    )]
                }
                None => Vec::new(),
            };
            ApiError::bad_request(
                "invalid_body",
                errors,
                &format!("The body does not have the expected shape: {message}"),
            )
        }
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            payload_too_large()
        }
        other => ApiError::bad_request("invalid_body", Vec::new(), &redact(&other.body_text())),
    }
}

pub fn payload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "The body is larger than 1 MiB.",
    )
}

/// Query-string extractor with problem-shaped failures.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let parsed = match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => q.0,
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    Vec::new(),
                    &format!("The query string is invalid: {}", redact(&e.body_text())),
                ))
            }
            Err(other) => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    Vec::new(),
                    &redact(&other.body_text()),
                ))
            }
        };
        // No stored text holds a NUL (PostgreSQL's text cannot, and refuses
        // a parameter with one): a value with one can only be a mistake.
        // Checked once the query is known good, so it names a real
        // parameter, once. A NUL can only arrive percent-encoded, so a
        // query without `%00` is not parsed again.
        let mut errors: Vec<FieldError> = Vec::new();
        let maybe_nul = parts.uri.query().is_some_and(|q| q.contains("%00"));
        if let Some(Ok(pairs)) = maybe_nul
            .then(|| axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri))
        {
            for (name, value) in pairs.0 {
                if value.contains('\0') && !errors.iter().any(|e| e.field == name) {
                    errors.push(FieldError::new(
                        name,
                        "invalid",
                        "Must not contain a NUL character (%00).",
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(QueryParams(parsed))
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

/// Path extractor with problem-shaped failures.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // No record's id holds a NUL (and PostgreSQL refuses a parameter
        // with one): such a path names nothing. It can only arrive as `%00`.
        if parts.uri.path().contains("%00") {
            let raw = axum::extract::RawPathParams::from_request_parts(parts, state).await;
            if raw.is_ok_and(|raw| raw.iter().any(|(_, value)| value.contains('\0'))) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "No such record.",
                ));
            }
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(PathParam(p.0)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "No such record.",
            )),
            Err(other) => Err(ApiError::bad_request(
                "invalid_path",
                Vec::new(),
                &other.body_text(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn serde_messages_lose_their_values_but_keep_field_names() {
        let m =
            redact("invalid type: string \"sk_live_123\", expected a sequence at line 1 column 30");
        assert!(!m.contains("sk_live_123"), "{m}");
        let m = redact("invalid type: integer `12345678`, expected a string");
        assert!(!m.contains("12345678"), "{m}");
        let m = redact("unknown variant `sk_secret`, expected one of `admin`, `viewer`");
        assert!(!m.contains("sk_secret") && m.contains("admin"), "{m}");
        let m = redact("unknown field `apikey`, expected one of `name`");
        assert!(m.contains("apikey"), "{m}");
    }
}
