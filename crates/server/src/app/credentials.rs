//! Credential use cases: check a draft, create, read, list, update (rotating
//! secrets), delete. Secrets are sealed here, before storage sees them, and
//! leave only as [`SecretString`]s for the code that must use them.

use std::collections::{BTreeMap, BTreeSet};

use domain::credential::{self, CheckedDraft, Draft, ParamInput};
use domain::{CredentialStatus, FieldError, Role};
use secrecy::SecretString;
use storage::{
    CredentialFilter, CredentialRecord, CredentialUpdate, Page, PageRequest, SealedSecret,
    SecretMeta,
};

use super::*;

/// A partial change to a credential. `None` keeps a field as it is.
#[derive(Debug, Default)]
pub struct CredentialPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Roles named here change; the others keep their service.
    pub services: Option<BTreeMap<String, String>>,
    /// A new key rotates the secret.
    pub api_key: Option<SecretString>,
    pub scopes: Option<Vec<String>>,
    /// Replaces the set of params; a secret param without a value keeps its stored value.
    pub config_params: Option<Vec<ParamInput>>,
}

/// Filters of the credential list as the API takes them.
#[derive(Debug, Default)]
pub struct ListParams {
    pub q: Option<String>,
    pub integration: Option<String>,
    pub auth_type: Option<String>,
    pub status: Option<String>,
    pub page: PageParams,
}

fn not_found(e: StoreError) -> AppError {
    match e {
        StoreError::NotFound => AppError::NotFound("credential"),
        other => other.into(),
    }
}

impl App {
    /// Every rule of a draft: the domain's, plus where its outbound calls
    /// would go (a `base_url` the outbound policy refuses is a field error now,
    /// not a failed call later).
    pub(super) async fn check_draft(
        &self,
        p: &Principal,
        draft: Draft,
        stored: &BTreeSet<String>,
    ) -> AppResult<Result<CheckedDraft, Vec<FieldError>>> {
        let custom = self.custom_services_named(p, &draft.services).await?;
        let mut target_error = None;
        if let Some(i) = self.catalog.integration(&draft.integration) {
            let base_url = draft
                .params
                .iter()
                .find(|p| p.key == credential::BASE_URL_PARAM);
            if let Some(value) = base_url
                .and_then(|p| p.value.as_ref())
                .filter(|_| i.allow_base_url_override)
            {
                use secrecy::ExposeSecret;
                let params = BTreeMap::from([(
                    credential::BASE_URL_PARAM.to_string(),
                    value.expose_secret().to_string(),
                )]);
                if let Err(m) = self.validator.target(i, &params) {
                    target_error = Some(FieldError::new(
                        "config_params.base_url",
                        "host_not_allowed",
                        m,
                    ));
                }
            }
        }
        Ok(
            match (
                credential::check(&self.catalog, &custom, draft, stored),
                target_error,
            ) {
                (Ok(checked), None) => Ok(checked),
                (Ok(_), Some(e)) => Err(vec![e]),
                (Err(errors), None) => Err(errors),
                (Err(mut errors), Some(e)) => {
                    errors.push(e);
                    Err(errors)
                }
            },
        )
    }

    /// The tenant's own services, fetched only when the draft names one.
    async fn custom_services_named(
        &self,
        p: &Principal,
        services: &BTreeMap<String, String>,
    ) -> AppResult<Vec<domain::ServiceDef>> {
        if services.values().any(|s| domain::ids::is_id("svc", s)) {
            self.custom_services(&p.tenant_id).await
        } else {
            Ok(Vec::new())
        }
    }

    /// Checks a draft as create would, including the name's uniqueness, without saving.
    pub async fn check_credential(&self, p: &Principal, draft: Draft) -> AppResult<()> {
        p.require(Role::Developer, "A viewer cannot create credentials.")?;
        let name = draft.name.trim().to_string();
        let mut errors = self
            .check_draft(p, draft, &BTreeSet::new())
            .await?
            .err()
            .unwrap_or_default();
        if !name.is_empty() {
            if let Some(id) = self
                .store
                .credential_id_by_name(&p.tenant_id, &name)
                .await?
            {
                errors.push(name_taken_error(&name, &id));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(errors))
        }
    }

    /// Creates a credential; with `validate`, only after the provider accepted the key.
    pub async fn create_credential(
        &self,
        p: &Principal,
        draft: Draft,
        validate: bool,
    ) -> AppResult<CredentialRecord> {
        p.require(Role::Developer, "A viewer cannot create credentials.")?;
        let checked = self
            .check_draft(p, draft, &BTreeSet::new())
            .await?
            .map_err(AppError::Validation)?;
        // With validation, refuse a clash before calling the provider; without,
        // the insert finds it in the same transaction anyway.
        let clash = if validate {
            self.store
                .credential_id_by_name(&p.tenant_id, &checked.name)
                .await?
        } else {
            None
        };
        if let Some(id) = clash {
            return Err(AppError::NameTaken {
                name: checked.name,
                existing_id: id,
            });
        }
        let (status, status_message, checked_at) = if validate {
            let service = checked
                .services
                .get(&domain::ServiceRole::TokenValidation)
                .cloned()
                .unwrap_or_default();
            let outcome = self
                .run_validation(
                    &p.tenant_id,
                    &checked.integration,
                    &service,
                    &checked.plain_params,
                    &checked.new_secrets,
                )
                .await?;
            accept(outcome)?
        } else {
            (
                CredentialStatus::Unverified,
                "Saved without checking the key.".to_string(),
                None,
            )
        };
        let id = domain::ids::credential();
        let kek = self.keys.active();
        let (dek, wrapped_dek) = kek.new_data_key(&p.tenant_id, &id)?;
        let (secrets, secret_fields) = seal_all(&dek, &p.tenant_id, &id, &checked.new_secrets)?;
        let at = now();
        let record = CredentialRecord {
            id: id.clone(),
            tenant_id: p.tenant_id.clone(),
            name: checked.name.clone(),
            description: checked.description.clone(),
            integration_id: checked.integration.clone(),
            auth_type: checked.auth_type.as_str().into(),
            services: services_map(&checked),
            scopes: checked.scopes.clone(),
            params: checked.plain_params.clone(),
            secret_fields,
            status: status.as_str().into(),
            status_message: Some(status_message),
            checked_at,
            version: 1,
            kek_id: kek.id().into(),
            wrapped_dek,
            created_at: at,
            created_by: p.token_id.clone(),
            updated_at: at,
            updated_by: p.token_id.clone(),
        };
        let audit = p.audit(
            "credential.create",
            "credential",
            &id,
            serde_json::json!({
                "name": record.name,
                "integration": record.integration_id,
                "secret_fields": record.secret_fields.iter().map(|s| &s.field).collect::<Vec<_>>(),
            }),
        );
        let mut record = record;
        let mut retried = false;
        loop {
            match self
                .store
                .insert_credential(record.clone(), secrets.clone(), audit.clone())
                .await
            {
                Err(StoreError::NameTaken(existing_id)) => {
                    return Err(AppError::NameTaken {
                        name: record.name.clone(),
                        existing_id,
                    })
                }
                // A rotation retired the key this server still took for active.
                Err(StoreError::KeyRetired(_)) if !retried => {
                    retried = true;
                    self.rewrap_to_active(&mut record).await?;
                }
                other => break other?,
            }
        }
        Ok(record)
    }

    pub async fn get_credential(&self, p: &Principal, id: &str) -> AppResult<CredentialRecord> {
        self.store
            .get_credential(&p.tenant_id, id)
            .await?
            .ok_or(AppError::NotFound("credential"))
    }

    pub async fn list_credentials(
        &self,
        p: &Principal,
        params: ListParams,
    ) -> AppResult<Page<CredentialRecord>> {
        let mut errors = Vec::new();
        let (limit, after) = params
            .page
            .resolve()
            .map_err(|e| errors.extend(e))
            .unwrap_or_default();
        if let Some(s) = &params.status {
            if CredentialStatus::parse(s).is_none() {
                errors.push(FieldError::new(
                    "status",
                    "invalid",
                    "status is one of valid, invalid, unverified.",
                ));
            }
        }
        // An integration no longer in the catalog still filters its
        // credentials (a restored backup may hold some); a value no
        // integration id can be is refused (PostgreSQL refuses a NUL).
        if let Some(i) = &params.integration {
            if i.is_empty() || i.len() > 64 || i.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    "integration",
                    "invalid",
                    "integration is an integration id, as GET /v1/integrations lists them.",
                ));
            }
        }
        if let Some(t) = &params.auth_type {
            if domain::AuthType::parse(t).is_none() {
                errors.push(FieldError::new(
                    "auth_type",
                    "invalid",
                    "auth_type is api_key.",
                ));
            }
        }
        let q = params
            .q
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty());
        if q.as_ref().is_some_and(|q| q.chars().count() > 100) {
            errors.push(FieldError::new(
                "q",
                "too_long",
                "Search with at most 100 characters.",
            ));
        }
        if !errors.is_empty() {
            return Err(AppError::Validation(errors));
        }
        let filter = CredentialFilter {
            q_integrations: q
                .as_deref()
                .map(|q| self.catalog.integrations_matching(&q.to_lowercase()))
                .unwrap_or_default(),
            q,
            integration: params.integration,
            auth_type: params.auth_type,
            status: params.status,
        };
        Ok(self
            .store
            .list_credentials(
                &p.tenant_id,
                &filter,
                PageRequest {
                    limit,
                    after: after.as_deref(),
                },
            )
            .await?)
    }

    pub async fn update_credential(
        &self,
        p: &Principal,
        id: &str,
        expected_version: i64,
        patch: CredentialPatch,
        validate: bool,
    ) -> AppResult<CredentialRecord> {
        p.require(Role::Developer, "A viewer cannot change credentials.")?;
        let current = self.get_credential(p, id).await?;
        if current.version != expected_version {
            return Err(AppError::VersionMismatch {
                expected: expected_version,
                current: current.version,
            });
        }
        let stored: BTreeSet<String> = current
            .secret_fields
            .iter()
            .map(|s| s.field.clone())
            .collect();
        let mut changed = Vec::new();
        let mut note = |f: &str, present: bool| {
            if present {
                changed.push(f.to_string())
            }
        };
        note("name", patch.name.is_some());
        note("description", patch.description.is_some());
        note("services", patch.services.is_some());
        note("api_key", patch.api_key.is_some());
        note("scopes", patch.scopes.is_some());
        note("config_params", patch.config_params.is_some());
        let mut services = current.services.clone();
        services.extend(patch.services.unwrap_or_default());
        let params = patch.config_params.unwrap_or_else(|| {
            let plain = current.params.iter().map(|(k, v)| ParamInput {
                key: k.clone(),
                value: Some(SecretString::from(v.clone())),
                secret: false,
            });
            let secret = stored
                .iter()
                .filter(|f| *f != credential::API_KEY_FIELD)
                .map(|f| ParamInput {
                    key: f.clone(),
                    value: None,
                    secret: true,
                });
            plain.chain(secret).collect()
        });
        let draft = Draft {
            name: patch.name.unwrap_or_else(|| current.name.clone()),
            description: patch
                .description
                .unwrap_or_else(|| current.description.clone()),
            integration: current.integration_id.clone(),
            auth_type: current.auth_type.clone(),
            services,
            api_key: patch.api_key,
            scopes: patch.scopes.unwrap_or_else(|| current.scopes.clone()),
            params,
        };
        let checked = self
            .check_draft(p, draft, &stored)
            .await?
            .map_err(AppError::Validation)?;

        let dek = self
            .keys
            .unwrap(&current.kek_id, &current.wrapped_dek, &p.tenant_id, id)?;
        let (put_secrets, mut secret_fields) =
            seal_all(&dek, &p.tenant_id, id, &checked.new_secrets)?;
        secret_fields.extend(
            current
                .secret_fields
                .iter()
                .filter(|s| checked.kept_secrets.contains(&s.field))
                .cloned(),
        );
        secret_fields.sort_by(|a, b| a.field.cmp(&b.field));
        let remove_secrets: Vec<String> = stored
            .iter()
            .filter(|f| !checked.kept_secrets.contains(*f) && !checked.new_secrets.contains_key(*f))
            .cloned()
            .collect();
        let secrets_changed = !put_secrets.is_empty() || !remove_secrets.is_empty();
        let mut record = CredentialRecord {
            name: checked.name.clone(),
            description: checked.description.clone(),
            services: services_map(&checked),
            scopes: checked.scopes.clone(),
            params: checked.plain_params.clone(),
            secret_fields,
            version: current.version + 1,
            updated_at: now(),
            updated_by: p.token_id.clone(),
            ..current.clone()
        };
        if secrets_changed {
            let (status, message, checked_at) = if validate {
                // The provider sees the credential as it will be: new secrets and kept ones.
                let mut secrets = self.open_secrets(&p.tenant_id, id).await?;
                secrets.retain(|field, _| checked.kept_secrets.contains(field));
                for (field, value) in &checked.new_secrets {
                    secrets.insert(field.clone(), value.clone());
                }
                accept(self.validate_record(&record, &secrets).await?)?
            } else {
                (
                    CredentialStatus::Unverified,
                    "The secret changed and was saved without checking.".to_string(),
                    None,
                )
            };
            record.status = status.as_str().into();
            record.status_message = Some(message);
            record.checked_at = checked_at;
        }
        let audit = p.audit(
            if put_secrets
                .iter()
                .any(|s| s.field == credential::API_KEY_FIELD)
            {
                "credential.rotate"
            } else {
                "credential.update"
            },
            "credential",
            id,
            serde_json::json!({
                "changed": changed,
                "secrets_written": put_secrets.iter().map(|s| &s.field).collect::<Vec<_>>(),
                "secrets_removed": remove_secrets,
            }),
        );
        let update = CredentialUpdate {
            record: record.clone(),
            expected_version,
            put_secrets,
            remove_secrets,
        };
        match self.store.update_credential(update, audit).await {
            Err(StoreError::NameTaken(existing_id)) => Err(AppError::NameTaken {
                name: record.name.clone(),
                existing_id,
            }),
            Err(StoreError::VersionMismatch { current }) => Err(AppError::VersionMismatch {
                expected: expected_version,
                current,
            }),
            other => other.map_err(not_found),
        }?;
        Ok(record)
    }

    pub async fn delete_credential(&self, p: &Principal, id: &str) -> AppResult<()> {
        p.require(Role::Developer, "A viewer cannot delete credentials.")?;
        let current = self.get_credential(p, id).await?;
        let audit = p.audit(
            "credential.delete",
            "credential",
            id,
            serde_json::json!({ "name": current.name, "integration": current.integration_id }),
        );
        self.store
            .delete_credential(&p.tenant_id, id, audit)
            .await
            .map_err(not_found)
    }

    /// Opens every secret of a credential, for the services that must use
    /// them (token validation, signature checks). Never for an API response.
    pub async fn open_secrets(
        &self,
        tenant: &str,
        id: &str,
    ) -> AppResult<BTreeMap<String, SecretString>> {
        let (record, sealed) = self
            .store
            .get_sealed(tenant, id)
            .await?
            .ok_or(AppError::NotFound("credential"))?;
        let dek = self
            .keys
            .unwrap(&record.kek_id, &record.wrapped_dek, tenant, id)?;
        sealed
            .into_iter()
            .map(|s| Ok((s.field.clone(), dek.open(tenant, id, &s.field, &s.sealed)?)))
            .collect()
    }
}

/// A validation outcome that lets a save go ahead, or the error that stops it.
fn accept(
    outcome: services::validate::Outcome,
) -> AppResult<(
    CredentialStatus,
    String,
    Option<chrono::DateTime<chrono::Utc>>,
)> {
    use services::validate::Outcome;
    match outcome {
        Outcome::Valid(m) => Ok((CredentialStatus::Valid, m, Some(now()))),
        Outcome::Invalid(m) => Err(AppError::TokenRejected(m)),
        Outcome::Unreachable(m) => Err(AppError::ProviderUnreachable(m)),
    }
}

fn name_taken_error(name: &str, existing_id: &str) -> FieldError {
    FieldError::new(
        "name",
        "taken",
        format!("A credential named {name:?} already exists ({existing_id}); choose another name."),
    )
}

pub(super) fn services_map(checked: &CheckedDraft) -> BTreeMap<String, String> {
    checked
        .services
        .iter()
        .map(|(r, s)| (r.as_str().to_string(), s.clone()))
        .collect()
}

impl App {
    /// Moves a new record's data key to the active master key, after the key
    /// it was wrapped by was retired while the record was being written.
    pub(super) async fn rewrap_to_active(&self, rec: &mut CredentialRecord) -> AppResult<()> {
        self.sync_keys().await?;
        let active = self.keys.active();
        if active.id() == rec.kek_id {
            return Err(AppError::Internal(anyhow::anyhow!(
                "the data retired master key {}, and this server holds no newer active key",
                rec.kek_id
            )));
        }
        let old = self.keys.get(&rec.kek_id).ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!("master key {} is gone", rec.kek_id))
        })?;
        rec.wrapped_dek =
            old.rewrap_data_key(&rec.wrapped_dek, &rec.tenant_id, &rec.id, &active)?;
        rec.kek_id = active.id().into();
        Ok(())
    }
}

pub(super) fn seal_all(
    dek: &crypto::DataKey,
    tenant: &str,
    credential: &str,
    secrets: &BTreeMap<String, SecretString>,
) -> AppResult<(Vec<SealedSecret>, Vec<SecretMeta>)> {
    let mut sealed = Vec::new();
    let mut meta = Vec::new();
    for (field, value) in secrets {
        sealed.push(SealedSecret {
            field: field.clone(),
            sealed: dek.seal(tenant, credential, field, value)?,
        });
        meta.push(SecretMeta {
            field: field.clone(),
            last4: crypto::last4(value),
        });
    }
    Ok((sealed, meta))
}

/// The content of an export file before sealing: tenant-neutral definitions
/// and their secrets.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ExportContent {
    pub kind: String,
    pub format: u32,
    pub exported_at: chrono::DateTime<chrono::Utc>,
    pub credentials: Vec<ExportedCredential>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ExportedCredential {
    pub name: String,
    pub description: String,
    pub integration: String,
    pub auth_type: String,
    pub services: BTreeMap<String, String>,
    pub scopes: Vec<String>,
    pub config_params: Vec<ExportedParam>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ExportedParam {
    pub key: String,
    pub value: String,
    pub secret: bool,
}

pub const EXPORT_KIND: &str = "latchkey.credentials";
pub const MIN_PASSPHRASE: usize = 12;

impl App {
    /// Seals the named credentials (all of the tenant's when `ids` is empty)
    /// into an export file with a passphrase. There is no unsealed export.
    pub async fn export_credentials(
        &self,
        p: &Principal,
        ids: &[String],
        passphrase: SecretString,
    ) -> AppResult<Vec<u8>> {
        use secrecy::ExposeSecret;
        p.require(Role::Developer, "A viewer cannot export credentials.")?;
        if passphrase.expose_secret().chars().count() < MIN_PASSPHRASE {
            return Err(AppError::Validation(vec![FieldError::new(
                "passphrase",
                "too_short",
                format!("Use a passphrase of at least {MIN_PASSPHRASE} characters; it is the only way to open the file."),
            )]));
        }
        let ids: Vec<String> = if ids.is_empty() {
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .list_credentials(
                        &p.tenant_id,
                        &CredentialFilter::default(),
                        PageRequest {
                            limit: MAX_LIMIT,
                            after: after.as_deref(),
                        },
                    )
                    .await?;
                all.extend(page.items.into_iter().map(|c| c.id));
                match page.next_cursor {
                    Some(c) => after = Some(c),
                    None => break all,
                }
            }
        } else {
            ids.to_vec()
        };
        let mut credentials = Vec::with_capacity(ids.len());
        for id in &ids {
            let record = self.get_credential(p, id).await?;
            let secrets = self.open_secrets(&p.tenant_id, id).await?;
            let mut config_params: Vec<ExportedParam> = record
                .params
                .iter()
                .map(|(k, v)| ExportedParam {
                    key: k.clone(),
                    value: v.clone(),
                    secret: false,
                })
                .collect();
            config_params.extend(secrets.iter().map(|(k, v)| ExportedParam {
                key: k.clone(),
                value: v.expose_secret().to_string(),
                secret: true,
            }));
            credentials.push(ExportedCredential {
                name: record.name,
                description: record.description,
                integration: record.integration_id,
                auth_type: record.auth_type,
                services: record.services,
                scopes: record.scopes,
                config_params,
            });
        }
        let content = ExportContent {
            kind: EXPORT_KIND.into(),
            format: 1,
            exported_at: now(),
            credentials,
        };
        let plain =
            zeroize::Zeroizing::new(serde_json::to_vec(&content).map_err(anyhow::Error::from)?);
        drop(content);
        // Argon2id is deliberately slow: keep it off the async threads.
        let file = tokio::task::spawn_blocking(move || crypto::export::seal(&passphrase, &plain))
            .await
            .map_err(|e| anyhow::anyhow!("export task: {e}"))?
            .map_err(anyhow::Error::from)?;
        let target = if ids.len() == 1 {
            ids[0].clone()
        } else {
            p.tenant_id.clone()
        };
        let audit = p.audit(
            "credential.export",
            if ids.len() == 1 {
                "credential"
            } else {
                "tenant"
            },
            &target,
            serde_json::json!({ "credentials": ids }),
        );
        self.store.record_audit(audit).await?;
        Ok(file)
    }
}
