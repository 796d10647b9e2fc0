//! Config services as records: the built-in ones from the catalog and each
//! tenant's own (declarative specs or sandboxed scripts), and resolving the
//! service a credential names for a role.

use domain::spec::ServiceSpec;
use domain::{FieldError, Role, ServiceDef, ServiceRole};
use storage::ServiceRecord;

use super::*;

/// A service as a use case sees it, built-in or the tenant's own.
#[derive(Debug, Clone)]
pub struct Service {
    pub def: ServiceDef,
    pub builtin: bool,
    pub version: i64,
}

/// What a client sends to create or replace a custom service.
#[derive(Debug)]
pub struct ServiceInput {
    pub name: String,
    pub role: String,
    pub description: String,
    pub integrations: Vec<String>,
    pub spec: serde_json::Value,
}

fn to_def(r: &ServiceRecord) -> Option<ServiceDef> {
    Some(ServiceDef {
        id: r.id.clone(),
        name: r.name.clone(),
        role: ServiceRole::parse(&r.role)?,
        description: r.description.clone(),
        integrations: r.integrations.clone(),
        spec: serde_json::from_value(r.spec.clone()).ok()?,
    })
}

impl App {
    /// The tenant's own services as catalog-shaped definitions.
    pub async fn custom_services(&self, tenant: &str) -> AppResult<Vec<ServiceDef>> {
        Ok(self
            .store
            .list_services(tenant)
            .await?
            .iter()
            .filter_map(to_def)
            .collect())
    }

    /// The service with this id for the tenant: built-in or its own.
    pub async fn resolve_service(&self, tenant: &str, id: &str) -> AppResult<Option<ServiceDef>> {
        if let Some(s) = self.catalog.service(id) {
            return Ok(Some(s.clone()));
        }
        if !domain::ids::is_id("svc", id) {
            return Ok(None);
        }
        Ok(self
            .store
            .get_service(tenant, id)
            .await?
            .as_ref()
            .and_then(to_def))
    }

    pub async fn list_services(
        &self,
        p: &Principal,
        integration: Option<&str>,
        role: Option<ServiceRole>,
    ) -> AppResult<Vec<Service>> {
        let mut out: Vec<Service> = self
            .catalog
            .services(integration, role)
            .map(|d| Service {
                def: d.clone(),
                builtin: true,
                version: 1,
            })
            .collect();
        for r in self.store.list_services(&p.tenant_id).await? {
            if let Some(def) = to_def(&r) {
                if integration.is_none_or(|i| def.fits(i)) && role.is_none_or(|x| def.role == x) {
                    out.push(Service {
                        def,
                        builtin: false,
                        version: r.version,
                    });
                }
            }
        }
        Ok(out)
    }

    pub async fn get_service(&self, p: &Principal, id: &str) -> AppResult<Service> {
        if let Some(s) = self.catalog.service(id) {
            return Ok(Service {
                def: s.clone(),
                builtin: true,
                version: 1,
            });
        }
        let r = self
            .store
            .get_service(&p.tenant_id, id)
            .await?
            .ok_or(AppError::NotFound("service"))?;
        let def =
            to_def(&r).ok_or_else(|| anyhow::anyhow!("stored service {id} does not parse"))?;
        Ok(Service {
            def,
            builtin: false,
            version: r.version,
        })
    }

    fn check_service(
        &self,
        input: &ServiceInput,
    ) -> Result<(ServiceRole, ServiceSpec), Vec<FieldError>> {
        let mut errors = Vec::new();
        let name = input.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            errors.push(FieldError::new(
                "name",
                "invalid",
                "Give the service a name of 1 to 100 characters.",
            ));
        }
        let role = ServiceRole::parse(&input.role);
        if role.is_none() {
            errors.push(FieldError::new(
                "role",
                "invalid",
                "role is one of token_validation, user_id_mapper, action_callback_parser, webhook_parser, webhook_event_verification.",
            ));
        }
        if input.integrations.is_empty() {
            errors.push(FieldError::new(
                "integrations",
                "required",
                "Name the integrations it fits, or [\"*\"] for any.",
            ));
        }
        for (n, i) in input.integrations.iter().enumerate() {
            if i != "*" && self.catalog.integration(i).is_none() {
                errors.push(FieldError::new(
                    format!("integrations[{n}]"),
                    "unknown",
                    format!("There is no integration {i:?}."),
                ));
            }
        }
        let spec = match serde_json::from_value::<ServiceSpec>(input.spec.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(FieldError::new(
                    "spec",
                    "invalid",
                    format!("The spec does not have a known shape: {e}"),
                ));
                None
            }
        };
        if let (Some(role), Some(spec)) = (role, &spec) {
            if let Err(e) = spec.check(role) {
                errors.extend(e);
            }
            if let ServiceSpec::Script { source } = spec {
                if let Err(e) = services::script::check(source) {
                    errors.push(FieldError::new("spec.source", "compile", e.to_string()));
                }
            }
        }
        match (role, spec, errors.is_empty()) {
            (Some(r), Some(s), true) => Ok((r, s)),
            _ => Err(errors),
        }
    }

    pub async fn create_service(&self, p: &Principal, input: ServiceInput) -> AppResult<Service> {
        p.require(Role::Developer, "A viewer cannot create services.")?;
        let (role, spec) = self.check_service(&input).map_err(AppError::Validation)?;
        let at = now();
        let record = ServiceRecord {
            id: domain::ids::new_id("svc"),
            tenant_id: p.tenant_id.clone(),
            name: input.name.trim().to_string(),
            role: role.as_str().into(),
            description: input.description,
            integrations: input.integrations,
            spec: serde_json::to_value(&spec).map_err(anyhow::Error::from)?,
            version: 1,
            created_at: at,
            created_by: p.token_id.clone(),
            updated_at: at,
            updated_by: p.token_id.clone(),
        };
        let audit = p.audit(
            "service.create",
            "service",
            &record.id,
            serde_json::json!({ "name": record.name, "role": record.role }),
        );
        self.store
            .create_service(record.clone(), audit)
            .await
            .map_err(|e| service_error(e, &record.name))?;
        let def =
            to_def(&record).ok_or_else(|| anyhow::anyhow!("a checked service does not convert"))?;
        Ok(Service {
            def,
            builtin: false,
            version: 1,
        })
    }

    /// Replaces a custom service. While credentials use it, refused with
    /// their list unless `force`.
    pub async fn update_service(
        &self,
        p: &Principal,
        id: &str,
        expected_version: i64,
        force: bool,
        input: ServiceInput,
    ) -> AppResult<Service> {
        p.require(Role::Developer, "A viewer cannot change services.")?;
        if self.catalog.service(id).is_some() {
            return Err(AppError::Forbidden(
                "Built-in services cannot be changed; create your own instead.",
            ));
        }
        let current = self
            .store
            .get_service(&p.tenant_id, id)
            .await?
            .ok_or(AppError::NotFound("service"))?;
        let (role, spec) = self.check_service(&input).map_err(AppError::Validation)?;
        if role.as_str() != current.role {
            return Err(AppError::Validation(vec![FieldError::new(
                "role",
                "immutable",
                "A service's role cannot change.",
            )]));
        }
        let record = ServiceRecord {
            name: input.name.trim().to_string(),
            description: input.description,
            integrations: input.integrations,
            spec: serde_json::to_value(&spec).map_err(anyhow::Error::from)?,
            version: current.version + 1,
            updated_at: now(),
            updated_by: p.token_id.clone(),
            ..current
        };
        let audit = p.audit(
            "service.update",
            "service",
            id,
            serde_json::json!({ "force": force }),
        );
        self.store
            .update_service(record.clone(), expected_version, force, audit)
            .await
            .map_err(|e| match e {
                StoreError::VersionMismatch { current } => AppError::VersionMismatch {
                    expected: expected_version,
                    current,
                },
                other => service_error(other, &record.name),
            })?;
        let def =
            to_def(&record).ok_or_else(|| anyhow::anyhow!("a checked service does not convert"))?;
        Ok(Service {
            def,
            builtin: false,
            version: record.version,
        })
    }

    pub async fn delete_service(&self, p: &Principal, id: &str) -> AppResult<()> {
        p.require(Role::Developer, "A viewer cannot delete services.")?;
        if self.catalog.service(id).is_some() {
            return Err(AppError::Forbidden("Built-in services cannot be deleted."));
        }
        let audit = p.audit("service.delete", "service", id, serde_json::json!({}));
        self.store
            .delete_service(&p.tenant_id, id, audit)
            .await
            .map_err(|e| service_error(e, id))
    }
}

fn service_error(e: StoreError, name: &str) -> AppError {
    match e {
        StoreError::NotFound => AppError::NotFound("service"),
        StoreError::InUse(users) => AppError::InUse(users),
        StoreError::NameTaken(_) => {
            AppError::Conflict(format!("A service named {name:?} already exists."))
        }
        other => other.into(),
    }
}
