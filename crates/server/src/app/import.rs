//! Import Credential: opens a sealed export file with its passphrase and
//! writes its credentials into the caller's tenant, all of them or none.
//! A name the tenant already uses is refused (listing every clash) unless
//! the caller chose to override the existing credential (same id, so its
//! URLs stay) or to create a new one under a free name.

use std::collections::{BTreeMap, BTreeSet};

use domain::credential::{Draft, ParamInput, API_KEY_FIELD};
use domain::{CredentialStatus, FieldError, Role};
use secrecy::SecretString;
use storage::{CredentialRecord, CredentialUpdate, ImportItem};

use super::credentials::{seal_all, services_map, ExportContent, EXPORT_KIND};
use super::*;

/// What to do with a name the tenant already uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Refuse the import and list the clashes.
    #[default]
    Ask,
    /// Replace the existing credential's definition and secrets.
    Override,
    /// Import under a free name: "Name (imported)", "Name (imported 2)", ….
    CreateNew,
}

/// What became of one credential of the file.
#[derive(Debug, Clone)]
pub struct Imported {
    pub id: String,
    pub name: String,
    /// `created`, `replaced` or `renamed` (created under a new name).
    pub action: &'static str,
    /// The name in the file, when it was imported under another.
    pub original_name: Option<String>,
}

/// Most credentials one file may hold.
const MAX_IMPORT: usize = 1000;

fn file_error(e: crypto::export::ExportError) -> AppError {
    use crypto::export::ExportError as E;
    let (code, message) = match e {
        E::NotAnExport => ("not_an_export", "This is not a Latchkey export file (.lkx). Choose the file Export wrote.".to_string()),
        E::UnsupportedVersion(v) => ("unsupported_version", format!("This export file is of format {v}, written by a newer Latchkey; import it there, or upgrade.")),
        E::Truncated => ("truncated", "The export file is cut short; copy or download it again.".into()),
        E::WrongPassphrase => ("wrong_passphrase", "The passphrase is wrong; use the one given when the file was exported.".into()),
        E::Tampered => ("tampered", "The export file was changed after it was exported; it cannot be trusted. Export it again.".into()),
        E::WrongPassphraseOrTampered => ("wrong_passphrase_or_tampered", "The passphrase is wrong, or the file was changed after it was exported.".into()),
        E::BadParameters => ("bad_parameters", "The export file's key parameters are out of range; it was not written by Latchkey.".into()),
        E::Random => ("internal", "Could not read the export file.".into()),
    };
    AppError::ImportFile { code, message }
}

impl App {
    /// Imports every credential of a sealed export file into the caller's
    /// tenant in one transaction. Each way the file can be wrong has its own
    /// error, and on any error nothing is written.
    pub async fn import_credentials(
        &self,
        p: &Principal,
        file: Vec<u8>,
        passphrase: SecretString,
        on_conflict: OnConflict,
    ) -> AppResult<Vec<Imported>> {
        p.require(Role::Developer, "A viewer cannot import credentials.")?;
        // Argon2id is deliberately slow: keep it off the async threads.
        let plain = tokio::task::spawn_blocking(move || crypto::export::open(&passphrase, &file))
            .await
            .map_err(|e| anyhow::anyhow!("import task: {e}"))?
            .map_err(file_error)?;
        let content: ExportContent =
            serde_json::from_slice(&plain).map_err(|_| AppError::ImportFile {
                code: "not_a_credential_export",
                message: "The file opened, but it does not hold Latchkey credentials.".into(),
            })?;
        drop(plain);
        if content.kind != EXPORT_KIND || content.format != 1 {
            return Err(AppError::ImportFile {
                code: "not_a_credential_export",
                message: format!(
                    "The file holds {:?} (format {}), not credentials this Latchkey can import.",
                    content.kind, content.format
                ),
            });
        }
        if content.credentials.is_empty() || content.credentials.len() > MAX_IMPORT {
            return Err(AppError::Validation(vec![FieldError::new(
                "file",
                "count",
                format!(
                    "An import holds 1 to {MAX_IMPORT} credentials; this file holds {}.",
                    content.credentials.len()
                ),
            )]));
        }

        // Check every credential first; report every problem at once.
        let mut errors = Vec::new();
        let mut checked = Vec::with_capacity(content.credentials.len());
        let mut seen = BTreeSet::new();
        for (i, c) in content.credentials.into_iter().enumerate() {
            if !seen.insert(c.name.to_lowercase()) {
                errors.push(FieldError::new(
                    format!("credentials[{i}].name"),
                    "duplicate",
                    format!("The file holds two credentials named {:?}.", c.name),
                ));
                continue;
            }
            let mut api_key = None;
            let mut params = Vec::new();
            for param in c.config_params {
                let value = SecretString::from(param.value);
                if param.secret && param.key == API_KEY_FIELD {
                    api_key = Some(value);
                } else {
                    params.push(ParamInput {
                        key: param.key,
                        value: Some(value),
                        secret: param.secret,
                    });
                }
            }
            let draft = Draft {
                name: c.name,
                description: c.description,
                integration: c.integration,
                auth_type: c.auth_type,
                services: c.services,
                api_key,
                scopes: c.scopes,
                params,
            };
            match self.check_draft(p, draft, &BTreeSet::new()).await? {
                Ok(ok) => checked.push(ok),
                Err(field_errors) => errors.extend(field_errors.into_iter().map(|mut e| {
                    e.field = format!("credentials[{i}].{}", e.field);
                    e
                })),
            }
        }
        if !errors.is_empty() {
            return Err(AppError::Validation(errors));
        }

        // Names the tenant uses already.
        let mut clashes = Vec::new();
        let mut existing = BTreeMap::new();
        for c in &checked {
            if let Some(id) = self
                .store
                .credential_id_by_name(&p.tenant_id, &c.name)
                .await?
            {
                clashes.push((c.name.clone(), id.clone()));
                existing.insert(c.name.to_lowercase(), id);
            }
        }
        if !clashes.is_empty() && on_conflict == OnConflict::Ask {
            return Err(AppError::ImportConflict(clashes));
        }
        // Names this import holds or gives: a rename must not take one.
        let mut used: BTreeSet<String> = seen;

        let at = now();
        let message = "Imported; not checked with the provider yet.".to_string();
        let mut items = Vec::with_capacity(checked.len());
        let mut outcome = Vec::with_capacity(checked.len());
        for c in checked {
            let clash = existing.get(&c.name.to_lowercase()).cloned();
            match (clash, on_conflict) {
                (Some(id), OnConflict::Override) => {
                    let current = self
                        .store
                        .get_credential(&p.tenant_id, &id)
                        .await?
                        .ok_or(AppError::NotFound("credential"))?;
                    let dek = self.keys.unwrap(
                        &current.kek_id,
                        &current.wrapped_dek,
                        &p.tenant_id,
                        &id,
                    )?;
                    let (put_secrets, secret_fields) =
                        seal_all(&dek, &p.tenant_id, &id, &c.new_secrets)?;
                    let remove_secrets = current
                        .secret_fields
                        .iter()
                        .map(|s| s.field.clone())
                        .filter(|f| !c.new_secrets.contains_key(f))
                        .collect();
                    let record = CredentialRecord {
                        name: c.name.clone(),
                        description: c.description.clone(),
                        integration_id: c.integration.clone(),
                        auth_type: c.auth_type.as_str().into(),
                        services: services_map(&c),
                        scopes: c.scopes.clone(),
                        params: c.plain_params.clone(),
                        secret_fields,
                        status: CredentialStatus::Unverified.as_str().into(),
                        status_message: Some(message.clone()),
                        checked_at: None,
                        version: current.version + 1,
                        updated_at: at,
                        updated_by: p.token_id.clone(),
                        ..current.clone()
                    };
                    outcome.push(Imported {
                        id: id.clone(),
                        name: record.name.clone(),
                        action: "replaced",
                        original_name: None,
                    });
                    items.push(ImportItem::Update(CredentialUpdate {
                        record,
                        expected_version: current.version,
                        put_secrets,
                        remove_secrets,
                    }));
                }
                (clash, _) => {
                    let (name, original_name) = match clash {
                        Some(_) => {
                            let name = self.free_name(&p.tenant_id, &c.name, &used).await?;
                            used.insert(name.to_lowercase());
                            (name, Some(c.name.clone()))
                        }
                        None => (c.name.clone(), None),
                    };
                    let id = domain::ids::credential();
                    let kek = self.keys.active();
                    let (dek, wrapped_dek) = kek.new_data_key(&p.tenant_id, &id)?;
                    let (secrets, secret_fields) =
                        seal_all(&dek, &p.tenant_id, &id, &c.new_secrets)?;
                    let record = CredentialRecord {
                        id: id.clone(),
                        tenant_id: p.tenant_id.clone(),
                        name: name.clone(),
                        description: c.description.clone(),
                        integration_id: c.integration.clone(),
                        auth_type: c.auth_type.as_str().into(),
                        services: services_map(&c),
                        scopes: c.scopes.clone(),
                        params: c.plain_params.clone(),
                        secret_fields,
                        status: CredentialStatus::Unverified.as_str().into(),
                        status_message: Some(message.clone()),
                        checked_at: None,
                        version: 1,
                        kek_id: kek.id().into(),
                        wrapped_dek,
                        created_at: at,
                        created_by: p.token_id.clone(),
                        updated_at: at,
                        updated_by: p.token_id.clone(),
                    };
                    outcome.push(Imported {
                        id,
                        name,
                        action: if original_name.is_some() {
                            "renamed"
                        } else {
                            "created"
                        },
                        original_name,
                    });
                    items.push(ImportItem::Insert(record, secrets));
                }
            }
        }
        let audit = p.audit(
            "credential.import",
            "tenant",
            &p.tenant_id.clone(),
            serde_json::json!({
                "credentials": outcome.iter().map(|o| serde_json::json!({ "id": o.id, "action": o.action })).collect::<Vec<_>>(),
            }),
        );
        let mut result = self
            .store
            .import_credentials(items.clone(), audit.clone())
            .await;
        if let Err(storage::StoreError::KeyRetired(_)) = result {
            // A rotation retired the key this server still took for active.
            for item in &mut items {
                if let ImportItem::Insert(rec, _) = item {
                    self.rewrap_to_active(rec).await?;
                }
            }
            result = self.store.import_credentials(items, audit).await;
        }
        match result {
            Err(storage::StoreError::NameTaken(existing_id)) => Err(AppError::Conflict(format!(
                "A credential with one of these names was created meanwhile ({existing_id}); nothing was imported. Try again."
            ))),
            Err(storage::StoreError::VersionMismatch { .. }) => Err(AppError::Conflict(
                "A credential being replaced changed meanwhile; nothing was imported. Try again.".into(),
            )),
            other => other.map_err(AppError::from),
        }?;
        Ok(outcome)
    }
}

impl App {
    /// The first of "Name (imported)", "Name (imported 2)", … that neither
    /// the tenant nor this import (`used`, lowercased) has.
    async fn free_name(
        &self,
        tenant: &str,
        name: &str,
        used: &BTreeSet<String>,
    ) -> AppResult<String> {
        for n in 1..=100 {
            let candidate = match n {
                1 => format!("{name} (imported)"),
                n => format!("{name} (imported {n})"),
            };
            if used.contains(&candidate.to_lowercase()) {
                continue;
            }
            if self
                .store
                .credential_id_by_name(tenant, &candidate)
                .await?
                .is_none()
            {
                return Ok(candidate);
            }
        }
        Err(AppError::Conflict(format!(
            "No free name for {name:?} among its first 100 imported copies; rename it first."
        )))
    }
}
