//! Tenants, management tokens and the audit log.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use domain::{FieldError, Role};
use secrecy::{ExposeSecret, SecretString};
use storage::{
    AuditEntry, CounterDelta, CredentialRecord, Page, PageRequest, TenantRecord, TokenRecord,
};

use super::*;

const TOKEN_PREFIX: &str = "lk_";

/// A new management token: its record and the token itself, shown once.
pub struct IssuedToken {
    pub record: TokenRecord,
    pub token: SecretString,
}

fn issue_token(tenant: &str, name: &str, role: Role, created_by: &str) -> AppResult<IssuedToken> {
    let raw = crypto::random_bytes(32)?;
    let token = SecretString::from(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw)));
    let record = TokenRecord {
        id: domain::ids::token(),
        tenant_id: tenant.into(),
        name: name.into(),
        role: role.as_str().into(),
        hash: crypto::token_hash(token.expose_secret()),
        created_at: now(),
        created_by: created_by.into(),
        revoked_at: None,
    };
    Ok(IssuedToken { record, token })
}

fn check_label(field: &str, value: &str) -> Result<String, Vec<FieldError>> {
    let v = value.trim();
    if v.is_empty() {
        Err(vec![FieldError::new(
            field,
            "required",
            format!("Give the {field}."),
        )])
    } else if v.chars().count() > 100 || v.chars().any(char::is_control) {
        Err(vec![FieldError::new(
            field,
            "invalid",
            "Use 1 to 100 characters without control characters.",
        )])
    } else {
        Ok(v.to_string())
    }
}

/// How long a dashboard session lives, at most.
pub const SESSION_HOURS: i64 = 12;

/// A dashboard session as the HTTP edge holds it: the cookie value (a
/// secret) and the CSRF token that state-changing requests must echo.
pub struct Session {
    pub id: SecretString,
    pub csrf: String,
}

fn random_token() -> AppResult<String> {
    Ok(URL_SAFE_NO_PAD.encode(crypto::random_bytes(32)?))
}

impl App {
    /// Signs in to the dashboard with a management token; `None` when the
    /// token is unknown or revoked.
    pub async fn sign_in(&self, token: &str) -> AppResult<Option<(Session, Principal)>> {
        let Some(principal) = self.authenticate(token.trim(), None).await? else {
            return Ok(None);
        };
        let id = SecretString::from(random_token()?);
        let csrf = random_token()?;
        let at = now();
        let record = storage::SessionRecord {
            id_hash: crypto::token_hash(id.expose_secret()),
            token_id: principal.token_id.clone(),
            csrf: csrf.clone(),
            created_at: at,
            expires_at: at + chrono::Duration::hours(SESSION_HOURS),
        };
        self.store.create_session(record).await?;
        Ok(Some((Session { id, csrf }, principal)))
    }

    /// The principal and CSRF token of a live session.
    pub async fn session(
        &self,
        id: &str,
        source: Option<String>,
    ) -> AppResult<Option<(Principal, String)>> {
        if id.len() > 100 {
            return Ok(None);
        }
        let Some((session, token, tenant)) = self
            .store
            .find_session(crypto::token_hash(id), now())
            .await?
        else {
            return Ok(None);
        };
        Ok(principal(token, tenant, source).map(|p| (p, session.csrf)))
    }

    pub async fn sign_out(&self, id: &str) -> AppResult<()> {
        Ok(self.store.delete_session(crypto::token_hash(id)).await?)
    }

    /// Resolves a bearer token to its principal; `None` for a token
    /// unknown, revoked, malformed, or of a role this version does not know.
    pub async fn authenticate(
        &self,
        bearer: &str,
        source: Option<String>,
    ) -> AppResult<Option<Principal>> {
        let Some(hash) = bearer_hash(bearer) else {
            return Ok(None);
        };
        let Some((token, tenant)) = self.store.find_token(hash).await? else {
            return Ok(None);
        };
        Ok(principal(token, tenant, source))
    }

    /// A bearer's read of one credential with its ingress counters, with
    /// the token's lookup and the read in one store call. `Ok(None)` for
    /// what [`App::authenticate`] refuses (a token unknown, revoked,
    /// malformed, or of a role this version does not know); a live token
    /// gets what [`App::credential_with_counters`] would give it.
    pub async fn credential_with_counters_for_bearer(
        &self,
        bearer: &str,
        id: &str,
    ) -> AppResult<Option<(CredentialRecord, Vec<CounterDelta>)>> {
        let Some(hash) = bearer_hash(bearer) else {
            return Ok(None);
        };
        let Some(found) = self.store.find_token_with_credential(hash, id).await? else {
            return Ok(None);
        };
        if Role::parse(&found.token.role).is_none() {
            return Ok(None);
        }
        let (record, stored) = found.credential.ok_or(AppError::NotFound("credential"))?;
        Ok(Some((record, self.with_pending_counters(id, stored))))
    }

    /// On an installation without tenants, creates the operator tenant and its
    /// first admin token. Returns the token, to be printed once.
    pub async fn bootstrap(&self) -> AppResult<Option<(TenantRecord, SecretString)>> {
        if self.store.tenant_count().await? > 0 {
            return Ok(None);
        }
        let tenant = TenantRecord {
            id: domain::ids::tenant(),
            name: "default".into(),
            is_operator: true,
            created_at: now(),
        };
        let issued = issue_token(&tenant.id, "initial admin", Role::Admin, "system")?;
        let audit = AuditEntry {
            id: domain::ids::audit(),
            tenant_id: tenant.id.clone(),
            actor_id: "system".into(),
            actor_name: "first start".into(),
            action: "tenant.create".into(),
            target_type: "tenant".into(),
            target_id: tenant.id.clone(),
            at: now(),
            source: None,
            details: serde_json::json!({ "name": tenant.name, "admin_token_id": issued.record.id }),
        };
        self.store
            .create_tenant(tenant.clone(), issued.record, Some(audit))
            .await?;
        Ok(Some((tenant, issued.token)))
    }

    pub async fn create_tenant(
        &self,
        p: &Principal,
        name: &str,
    ) -> AppResult<(TenantRecord, IssuedToken)> {
        self.require_operator(p)?;
        let name = check_label("name", name).map_err(AppError::Validation)?;
        let tenant = TenantRecord {
            id: domain::ids::tenant(),
            name,
            is_operator: false,
            created_at: now(),
        };
        // Made by the operator, whose token id belongs to another tenant and
        // must not show in this one's token list; the operator's audit entry
        // records who it was.
        let issued = issue_token(&tenant.id, "initial admin", Role::Admin, "operator")?;
        let audit = p.audit(
            "tenant.create",
            "tenant",
            &tenant.id,
            serde_json::json!({ "name": tenant.name, "admin_token_id": issued.record.id }),
        );
        match self
            .store
            .create_tenant(tenant.clone(), issued.record.clone(), Some(audit))
            .await
        {
            Err(StoreError::Conflict) => Err(AppError::Conflict(format!(
                "A tenant named {:?} already exists.",
                tenant.name
            ))),
            other => other.map_err(AppError::from),
        }?;
        Ok((tenant, issued))
    }

    pub async fn list_tenants(
        &self,
        p: &Principal,
        page: &PageParams,
    ) -> AppResult<Page<TenantRecord>> {
        self.require_operator(p)?;
        let (limit, after) = page.resolve().map_err(AppError::Validation)?;
        Ok(self
            .store
            .list_tenants(PageRequest {
                limit,
                after: after.as_deref(),
            })
            .await?)
    }

    fn require_operator(&self, p: &Principal) -> AppResult<()> {
        p.require(
            Role::Admin,
            "Only an admin of the operator tenant manages tenants.",
        )?;
        if !p.tenant_is_operator {
            return Err(AppError::Forbidden(
                "Only an admin of the operator tenant manages tenants.",
            ));
        }
        Ok(())
    }

    pub async fn create_token(
        &self,
        p: &Principal,
        name: &str,
        role: &str,
    ) -> AppResult<IssuedToken> {
        p.require(Role::Admin, "Only an admin manages tokens.")?;
        let mut errors = Vec::new();
        let name = check_label("name", name).map_err(|e| errors.extend(e)).ok();
        let role = Role::parse(role);
        if role.is_none() {
            errors.push(FieldError::new(
                "role",
                "invalid",
                "role is one of admin, developer, viewer.",
            ));
        }
        let (Some(name), Some(role), true) = (name, role, errors.is_empty()) else {
            return Err(AppError::Validation(errors));
        };
        let issued = issue_token(&p.tenant_id, &name, role, &p.token_id)?;
        let audit = p.audit(
            "token.create",
            "token",
            &issued.record.id,
            serde_json::json!({ "name": name, "role": role.as_str() }),
        );
        self.store
            .create_token(issued.record.clone(), audit)
            .await?;
        Ok(issued)
    }

    pub async fn list_tokens(
        &self,
        p: &Principal,
        page: &PageParams,
    ) -> AppResult<Page<TokenRecord>> {
        p.require(Role::Admin, "Only an admin manages tokens.")?;
        let (limit, after) = page.resolve().map_err(AppError::Validation)?;
        Ok(self
            .store
            .list_tokens(
                &p.tenant_id,
                PageRequest {
                    limit,
                    after: after.as_deref(),
                },
            )
            .await?)
    }

    pub async fn revoke_token(&self, p: &Principal, id: &str) -> AppResult<()> {
        p.require(Role::Admin, "Only an admin manages tokens.")?;
        let audit = p.audit("token.revoke", "token", id, serde_json::json!({}));
        self.store
            .revoke_token(&p.tenant_id, id, now(), audit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => AppError::NotFound("token"),
                other => other.into(),
            })
    }

    pub async fn list_audit(
        &self,
        p: &Principal,
        page: &PageParams,
    ) -> AppResult<Page<AuditEntry>> {
        p.require(Role::Admin, "Only an admin reads the audit log.")?;
        let (limit, after) = page.resolve().map_err(AppError::Validation)?;
        Ok(self
            .store
            .list_audit(
                &p.tenant_id,
                PageRequest {
                    limit,
                    after: after.as_deref(),
                },
            )
            .await?)
    }
}

/// The stored hash of what may be a management token; `None` for what
/// cannot be one (no lookup is needed to refuse it).
fn bearer_hash(bearer: &str) -> Option<[u8; 32]> {
    (bearer.starts_with(TOKEN_PREFIX) && bearer.len() <= 200).then(|| crypto::token_hash(bearer))
}

/// The principal of a live token; `None` if its role is not one this
/// version knows.
fn principal(
    token: TokenRecord,
    tenant: TenantRecord,
    source: Option<String>,
) -> Option<Principal> {
    Some(Principal {
        role: Role::parse(&token.role)?,
        token_id: token.id,
        token_name: token.name,
        tenant_id: tenant.id,
        tenant_name: tenant.name,
        tenant_is_operator: tenant.is_operator,
        source,
    })
}
