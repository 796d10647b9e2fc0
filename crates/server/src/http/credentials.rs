//! `/v1/credentials`: the request and response shapes of credentials, and the
//! handlers that turn them into use-case calls. Secrets are write-only: they
//! come in as [`SecretString`] and go out only as `{ "set": true, "last4": … }`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::credential::{Draft, ParamInput, API_KEY_FIELD};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use storage::CredentialRecord;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, JsonBody, PathParam, Problem, QueryParams};
use super::{if_match, rfc3339, ListOf};
use crate::app::{
    encode_cursor, App, CredentialPatch, ListParams, OnConflict, PageParams, Principal,
};

/// A config param as sent: a secret param's `value` may be left out on update
/// to keep the stored value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigParamIn {
    pub key: String,
    #[schema(value_type = Option<String>, format = Password)]
    pub value: Option<SecretString>,
    #[serde(default)]
    pub secret: bool,
}

fn params_in(params: Vec<ConfigParamIn>) -> Vec<ParamInput> {
    params
        .into_iter()
        .map(|p| ParamInput {
            key: p.key,
            value: p.value,
            secret: p.secret,
        })
        .collect()
}

fn default_auth_type() -> String {
    "api_key".into()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Catalog id of the integration, e.g. `twilio`.
    pub integration: String,
    #[serde(default = "default_auth_type")]
    #[schema(default = "api_key")]
    pub auth_type: String,
    /// Service id per role; roles left out take the integration's default.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// The key itself. Write-only.
    #[schema(value_type = Option<String>, format = Password)]
    pub api_key: Option<SecretString>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub config_params: Vec<ConfigParamIn>,
    /// Check the key with the integration's Token Validation Service before saving.
    #[serde(default = "default_true")]
    #[schema(default = true)]
    pub validate: bool,
}

impl CreateCredential {
    fn into_draft(self) -> Draft {
        Draft {
            name: self.name,
            description: self.description,
            integration: self.integration,
            auth_type: self.auth_type,
            services: self.services,
            api_key: self.api_key,
            scopes: self.scopes,
            params: params_in(self.config_params),
        }
    }
}

/// A partial change; fields left out keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCredential {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Roles named here change service; the others keep theirs.
    pub services: Option<BTreeMap<String, String>>,
    /// A new key rotates the secret; leave it out to keep the current one.
    #[schema(value_type = Option<String>, format = Password)]
    pub api_key: Option<SecretString>,
    pub scopes: Option<Vec<String>>,
    /// Replaces the params; a secret param sent without a value keeps its stored value.
    pub config_params: Option<Vec<ConfigParamIn>>,
    #[serde(default = "default_true")]
    #[schema(default = true)]
    pub validate: bool,
}

/// A stored secret, as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretState {
    pub set: bool,
    /// Last four characters, for secrets long enough for that to be safe.
    pub last4: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ParamValue {
    Plain(String),
    Secret(SecretState),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigParamOut {
    pub key: String,
    pub secret: bool,
    pub value: ParamValue,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackUrls {
    pub webhook_url: String,
    pub action_url: String,
    /// Only for auth types with a browser consent step.
    pub authentication_url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Credential {
    pub id: String,
    pub name: String,
    pub description: String,
    pub integration: String,
    pub integration_name: String,
    pub auth_type: String,
    pub services: BTreeMap<String, String>,
    pub api_key: SecretState,
    pub scopes: Vec<String>,
    pub config_params: Vec<ConfigParamOut>,
    /// `valid`, `invalid` or `unverified`.
    pub status: String,
    pub status_message: Option<String>,
    #[serde(serialize_with = "rfc3339::option")]
    pub checked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub callback_urls: CallbackUrls,
    pub version: i64,
    #[serde(serialize_with = "rfc3339::utc")]
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Id of the token that created it.
    pub created_by: String,
    #[serde(serialize_with = "rfc3339::utc")]
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub updated_by: String,
    /// Ingress counters; on a single credential's view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressCounters>,
}

impl Credential {
    pub fn from_record(app: &App, r: CredentialRecord) -> Credential {
        let secret = |field: &str| {
            let meta = r.secret_fields.iter().find(|s| s.field == field);
            SecretState {
                set: meta.is_some(),
                last4: meta.and_then(|m| m.last4.clone()),
            }
        };
        let mut config_params: Vec<ConfigParamOut> = r
            .params
            .iter()
            .map(|(k, v)| ConfigParamOut {
                key: k.clone(),
                secret: false,
                value: ParamValue::Plain(v.clone()),
            })
            .collect();
        config_params.extend(
            r.secret_fields
                .iter()
                .filter(|s| s.field != API_KEY_FIELD)
                .map(|s| ConfigParamOut {
                    key: s.field.clone(),
                    secret: true,
                    value: ParamValue::Secret(secret(&s.field)),
                }),
        );
        config_params.sort_by(|a, b| a.key.cmp(&b.key));
        let auth = domain::AuthType::parse(&r.auth_type);
        let base = &app.public_url;
        Credential {
            integration_name: app
                .catalog
                .integration(&r.integration_id)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| r.integration_id.clone()),
            api_key: secret(API_KEY_FIELD),
            callback_urls: CallbackUrls {
                webhook_url: url(base, "/hooks/", &r.id),
                action_url: url(base, "/actions/", &r.id),
                authentication_url: auth
                    .filter(|a| a.has_consent_step())
                    .map(|_| url(base, "/auth/", &r.id)),
            },
            config_params,
            id: r.id,
            name: r.name,
            description: r.description,
            integration: r.integration_id,
            auth_type: r.auth_type,
            services: r.services,
            scopes: r.scopes,
            status: r.status,
            status_message: r.status_message,
            checked_at: r.checked_at,
            version: r.version,
            created_at: r.created_at,
            created_by: r.created_by,
            updated_at: r.updated_at,
            updated_by: r.updated_by,
            ingress: None,
        }
    }
}

/// `{base}{path}{id}`, in one allocation of its final size. Every
/// credential in a response has two or three; under callgrind, building a
/// Stripe credential's two with `format!` took about 2,600 instructions
/// more.
fn url(base: &str, path: &str, id: &str) -> String {
    let mut url = String::with_capacity(base.len() + path.len() + id.len());
    url.push_str(base);
    url.push_str(path);
    url.push_str(id);
    url
}

fn with_etag(status: StatusCode, c: Credential) -> Response {
    let etag =
        HeaderValue::from_str(&format!("\"{}\"", c.version)).expect("a number is a valid header");
    let mut res = (status, Json(c)).into_response();
    res.headers_mut().insert(header::ETAG, etag);
    res
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CredentialQuery {
    /// Matches the credential's name or its integration's name, case-insensitively.
    pub q: Option<String>,
    /// Only credentials of this integration: an id as `GET /v1/integrations`
    /// lists them (one no longer listed still filters its credentials).
    #[param(min_length = 1, max_length = 64)]
    pub integration: Option<String>,
    pub auth_type: Option<String>,
    pub status: Option<String>,
    /// 1 to 200; default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DraftCheck {
    pub valid: bool,
}

#[utoipa::path(post, path = "/v1/credentials", tag = "credentials",
    request_body = CreateCredential,
    responses(
        (status = 201, description = "Created", body = Credential),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, description = "The name is taken", body = Problem),
        (status = 413, body = Problem),
        (status = 422, description = "Invalid fields, or the provider rejected the key (code token_rejected)", body = Problem),
        (status = 502, description = "The provider could not be reached (code provider_unreachable)", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_credential(
    State(app): State<Arc<App>>,
    p: Principal,
    JsonBody(body): JsonBody<CreateCredential>,
) -> Result<Response, ApiError> {
    let validate = body.validate;
    let record = app
        .create_credential(&p, body.into_draft(), validate)
        .await?;
    Ok(with_etag(
        StatusCode::CREATED,
        Credential::from_record(&app, record),
    ))
}

#[utoipa::path(post, path = "/v1/credentials/validate", tag = "credentials",
    request_body = CreateCredential,
    responses(
        (status = 200, description = "The draft would be accepted", body = DraftCheck),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, description = "Every problem, per field", body = Problem)),
    security(("bearer" = [])))]
pub async fn validate_credential(
    State(app): State<Arc<App>>,
    p: Principal,
    JsonBody(body): JsonBody<CreateCredential>,
) -> Result<Json<DraftCheck>, ApiError> {
    app.check_credential(&p, body.into_draft()).await?;
    Ok(Json(DraftCheck { valid: true }))
}

#[utoipa::path(get, path = "/v1/credentials", tag = "credentials",
    params(CredentialQuery),
    responses(
        (status = 200, body = ListOf<Credential>),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_credentials(
    State(app): State<Arc<App>>,
    p: Principal,
    QueryParams(q): QueryParams<CredentialQuery>,
) -> Result<Json<ListOf<Credential>>, ApiError> {
    let page = app
        .list_credentials(
            &p,
            ListParams {
                q: q.q,
                integration: q.integration,
                auth_type: q.auth_type,
                status: q.status,
                page: PageParams {
                    limit: q.limit,
                    cursor: q.cursor,
                },
            },
        )
        .await?;
    Ok(Json(ListOf {
        items: page
            .items
            .into_iter()
            .map(|r| Credential::from_record(&app, r))
            .collect(),
        next_cursor: page.next_cursor.as_deref().map(encode_cursor),
    }))
}

#[utoipa::path(get, path = "/v1/credentials/{id}", tag = "credentials",
    params(("id" = String, Path, description = "Credential id")),
    responses(
        (status = 200, body = Credential, headers(("ETag" = String, description = "The version, for If-Match"))),
        (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_credential(
    State(app): State<Arc<App>>,
    caller: Caller,
    id: Result<PathParam<String>, ApiError>,
) -> Result<Response, ApiError> {
    // The hottest read: a bearer's token is looked up in the same store
    // read as the credential.
    let (record, counters) = match caller {
        Caller::Session(p) => app.credential_with_counters(&p, &id?.0).await?,
        Caller::Bearer(bearer) => {
            let id = match id {
                Ok(PathParam(id)) => id,
                Err(bad_path) => {
                    // As on every other path: the token first.
                    bearer.into_principal(&app).await?;
                    return Err(bad_path);
                }
            };
            let reader = app.clone();
            bearer
                .authenticate(&app, |token, _| async move {
                    reader
                        .credential_with_counters_for_bearer(token.expose_secret(), &id)
                        .await
                })
                .await?
        }
    };
    let mut c = Credential::from_record(&app, record);
    c.ingress = Some(IngressCounters::from_deltas(&counters));
    Ok(with_etag(StatusCode::OK, c))
}

#[utoipa::path(post, path = "/v1/credentials/{id}/validate", tag = "credentials",
    params(("id" = String, Path, description = "Credential id")),
    responses(
        (status = 200, description = "Checked; the result is in status, status_message and checked_at", body = Credential),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revalidate_credential(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let record = app.revalidate_credential(&p, &id).await?;
    Ok(with_etag(
        StatusCode::OK,
        Credential::from_record(&app, record),
    ))
}

/// What the credential's URLs received, summed over every replica.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct IngressCounters {
    pub accepted: u64,
    pub duplicates: u64,
    pub handshakes: u64,
    pub unmapped_users: u64,
    /// Refused deliveries by reason (e.g. `bad_signature`, `stale_timestamp`).
    pub rejected: BTreeMap<String, u64>,
}

impl IngressCounters {
    fn from_deltas(deltas: &[storage::CounterDelta]) -> IngressCounters {
        let mut c = IngressCounters::default();
        for d in deltas {
            match d.outcome.as_str() {
                "accepted" => c.accepted += d.count,
                "duplicate" => c.duplicates += d.count,
                "handshake" => c.handshakes += d.count,
                "unmapped_user" => c.unmapped_users += d.count,
                other => {
                    let reason = other.strip_prefix("rejected:").unwrap_or(other);
                    *c.rejected.entry(reason.to_string()).or_default() += d.count;
                }
            }
        }
        c
    }
}

#[utoipa::path(patch, path = "/v1/credentials/{id}", tag = "credentials",
    params(("id" = String, Path, description = "Credential id"),
           ("If-Match" = String, Header, description = "The version being changed (the ETag)")),
    request_body = UpdateCredential,
    responses(
        (status = 200, body = Credential),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 412, description = "Stale version", body = Problem),
        (status = 413, body = Problem),
        (status = 422, body = Problem), (status = 428, description = "If-Match missing", body = Problem),
        (status = 502, body = Problem)),
    security(("bearer" = [])))]
pub async fn update_credential(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam(id): PathParam<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UpdateCredential>,
) -> Result<Response, ApiError> {
    let version = if_match(&headers)?;
    let patch = CredentialPatch {
        name: body.name,
        description: body.description,
        services: body.services,
        api_key: body.api_key,
        scopes: body.scopes,
        config_params: body.config_params.map(params_in),
    };
    let record = app
        .update_credential(&p, &id, version, patch, body.validate)
        .await?;
    Ok(with_etag(
        StatusCode::OK,
        Credential::from_record(&app, record),
    ))
}

#[utoipa::path(delete, path = "/v1/credentials/{id}", tag = "credentials",
    params(("id" = String, Path, description = "Credential id")),
    responses(
        (status = 204, description = "Deleted, secrets included"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_credential(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_credential(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutUserMapping {
    /// The platform user the app's user id maps to.
    pub user_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserMappingOut {
    pub app_user_id: String,
    pub user_id: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<storage::UserMapping> for UserMappingOut {
    fn from(m: storage::UserMapping) -> Self {
        UserMappingOut {
            app_user_id: m.app_user_id,
            user_id: m.user_id,
            created_at: m.created_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MappingQuery {
    /// 1 to 200; default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/credentials/{id}/user-mappings", tag = "credentials",
    params(("id" = String, Path, description = "Credential id"), MappingQuery),
    responses((status = 200, body = ListOf<UserMappingOut>), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 400, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_user_mappings(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam(id): PathParam<String>,
    QueryParams(q): QueryParams<MappingQuery>,
) -> Result<Json<ListOf<UserMappingOut>>, ApiError> {
    let page = app
        .list_user_mappings(
            &p,
            &id,
            &PageParams {
                limit: q.limit,
                cursor: q.cursor,
            },
        )
        .await?;
    Ok(Json(ListOf {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(put, path = "/v1/credentials/{id}/user-mappings/{app_user_id}", tag = "credentials",
    params(("id" = String, Path, description = "Credential id"), ("app_user_id" = String, Path, description = "The app's user id")),
    request_body = PutUserMapping,
    responses((status = 200, body = UserMappingOut), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 413, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_user_mapping(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam((id, app_user_id)): PathParam<(String, String)>,
    JsonBody(body): JsonBody<PutUserMapping>,
) -> Result<Json<UserMappingOut>, ApiError> {
    Ok(Json(
        app.put_user_mapping(&p, &id, &app_user_id, &body.user_id)
            .await?
            .into(),
    ))
}

#[utoipa::path(delete, path = "/v1/credentials/{id}/user-mappings/{app_user_id}", tag = "credentials",
    params(("id" = String, Path, description = "Credential id"), ("app_user_id" = String, Path, description = "The app's user id")),
    responses((status = 204, description = "Removed"), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_user_mapping(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam((id, app_user_id)): PathParam<(String, String)>,
) -> Result<StatusCode, ApiError> {
    app.delete_user_mapping(&p, &id, &app_user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// Seals the file; at least 12 characters. Needed to import it anywhere.
    #[schema(value_type = String, format = Password)]
    pub passphrase: SecretString,
    /// Credentials to export; all of the tenant's when left out.
    #[serde(default)]
    pub ids: Vec<String>,
}

#[utoipa::path(post, path = "/v1/credentials/export", tag = "credentials",
    request_body = ExportRequest,
    responses(
        (status = 200, description = "The sealed export file (Argon2id + XChaCha20-Poly1305)", content_type = "application/octet-stream"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn export_credentials(
    State(app): State<Arc<App>>,
    p: Principal,
    JsonBody(body): JsonBody<ExportRequest>,
) -> Result<Response, ApiError> {
    let count = body.ids.len();
    let file = app
        .export_credentials(&p, &body.ids, body.passphrase)
        .await?;
    let name = if count == 1 {
        format!("latchkey-{}.lkx", body.ids[0])
    } else {
        "latchkey-credentials.lkx".into()
    };
    let mut res = (StatusCode::OK, file).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// What to do with names the tenant already uses.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnConflictParam {
    /// Refuse with 409 `name_conflict`, listing the clashes (the default).
    #[default]
    Ask,
    /// Replace each existing credential (same id and URLs) with the file's.
    Override,
    /// Import under a new name: "Name (imported)", "Name (imported 2)", ….
    CreateNew,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The export file (`.lkx`), base64-encoded.
    pub file: String,
    /// The passphrase the file was exported with.
    #[schema(value_type = String, format = Password)]
    pub passphrase: SecretString,
    #[serde(default)]
    pub on_conflict: OnConflictParam,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedView {
    pub id: String,
    pub name: String,
    /// `created`, `replaced`, or `renamed` (created under a new name).
    pub action: String,
    /// The name in the file, when imported under another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResponse {
    pub imported: Vec<ImportedView>,
}

#[utoipa::path(post, path = "/v1/credentials/import", tag = "credentials",
    request_body = ImportRequest,
    responses(
        (status = 201, body = ImportResponse, description = "Every credential of the file, imported in one transaction"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem, description = "name_conflict: names already used (listed); nothing imported"),
        (status = 413, body = Problem),
        (status = 422, body = Problem, description = "The file cannot be used: not_an_export, truncated, wrong_passphrase, tampered, unsupported_version, not_a_credential_export, or invalid credentials")),
    security(("bearer" = [])))]
pub async fn import_credentials(
    State(app): State<Arc<App>>,
    p: Principal,
    JsonBody(body): JsonBody<ImportRequest>,
) -> Result<(StatusCode, Json<ImportResponse>), ApiError> {
    use base64::Engine;
    let file = base64::engine::general_purpose::STANDARD
        .decode(body.file.trim())
        .map_err(|_| {
            ApiError::validation(vec![domain::FieldError::new(
                "file",
                "not_base64",
                "Send the export file's bytes base64-encoded.",
            )])
        })?;
    let on_conflict = match body.on_conflict {
        OnConflictParam::Ask => OnConflict::Ask,
        OnConflictParam::Override => OnConflict::Override,
        OnConflictParam::CreateNew => OnConflict::CreateNew,
    };
    let imported = app
        .import_credentials(&p, file, body.passphrase, on_conflict)
        .await?;
    let imported = imported
        .into_iter()
        .map(|i| ImportedView {
            id: i.id,
            name: i.name,
            action: i.action.to_string(),
            original_name: i.original_name,
        })
        .collect();
    Ok((StatusCode::CREATED, Json(ImportResponse { imported })))
}
