//! Running a credential's Token Validation Service: on create, on every
//! secret change, and on demand.

use std::collections::BTreeMap;

use domain::spec::{HttpCheck, ServiceSpec};
use domain::{CredentialStatus, Role, ServiceRole};
use secrecy::SecretString;
use services::validate::{Outcome, Subject};
use storage::CredentialRecord;

use super::*;

impl App {
    /// Calls the provider with these values; the service is the one the
    /// credential names for token validation.
    pub(crate) async fn run_validation(
        &self,
        tenant: &str,
        integration_id: &str,
        service_id: &str,
        params: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, SecretString>,
    ) -> AppResult<Outcome> {
        let integration = self
            .catalog
            .integration(integration_id)
            .ok_or_else(|| anyhow::anyhow!("integration {integration_id} left the catalog"))?;
        let check = match self.resolve_service(tenant, service_id).await? {
            Some(s) if s.role == ServiceRole::TokenValidation => match s.spec {
                ServiceSpec::HttpCheck(h) => h,
                _ => HttpCheck::default(),
            },
            _ => {
                return Ok(Outcome::Unreachable(format!(
                    "the token validation service {service_id} no longer exists"
                )))
            }
        };
        Ok(self
            .validator
            .validate(
                &check,
                &Subject {
                    integration,
                    params,
                    secrets,
                },
            )
            .await)
    }

    /// Calls the provider for a credential as stored (with `secrets` as they
    /// are or are about to be).
    pub(crate) async fn validate_record(
        &self,
        record: &CredentialRecord,
        secrets: &BTreeMap<String, SecretString>,
    ) -> AppResult<Outcome> {
        let service = record
            .services
            .get(ServiceRole::TokenValidation.as_str())
            .cloned()
            .unwrap_or_default();
        self.run_validation(
            &record.tenant_id,
            &record.integration_id,
            &service,
            &record.params,
            secrets,
        )
        .await
    }

    /// Re-runs validation of a stored credential and records the result.
    pub async fn revalidate_credential(
        &self,
        p: &Principal,
        id: &str,
    ) -> AppResult<CredentialRecord> {
        p.require(Role::Developer, "A viewer cannot run checks.")?;
        let record = self.get_credential(p, id).await?;
        let secrets = self.open_secrets(&p.tenant_id, id).await?;
        let outcome = self.validate_record(&record, &secrets).await?;
        let (status, message) = status_of(&outcome);
        let at = now();
        let audit = p.audit(
            "credential.validate",
            "credential",
            id,
            serde_json::json!({ "status": status.as_str() }),
        );
        self.store
            .set_credential_status(&p.tenant_id, id, status.as_str(), &message, at, audit)
            .await?;
        Ok(CredentialRecord {
            status: status.as_str().into(),
            status_message: Some(message),
            checked_at: Some(at),
            ..record
        })
    }
}

/// The status and message an outcome leaves on the credential.
pub(crate) fn status_of(outcome: &Outcome) -> (CredentialStatus, String) {
    match outcome {
        Outcome::Valid(m) => (CredentialStatus::Valid, m.clone()),
        Outcome::Invalid(m) => (CredentialStatus::Invalid, m.clone()),
        Outcome::Unreachable(m) => (
            CredentialStatus::Unverified,
            format!("Could not check the key: {m}."),
        ),
    }
}
