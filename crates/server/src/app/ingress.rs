//! Ingress: what happens to a request on a credential's Webhook or Action
//! URL. Verify → handshake or parse → map the user → store → acknowledge, in
//! that order: nothing is stored before verification passes, and the caller
//! acknowledges only after the event is durably committed (the store's group
//! commit). Also owns the ingress counters and the event read API.

use std::collections::HashMap;
use std::sync::Mutex;

use domain::spec::ServiceSpec;
use domain::{FieldError, Role, ServiceRole};
use services::parse::{self, ParseError, WebhookOutcome};
use services::verify::{self, Rejection};
use services::{Inbound, NormalEvent};
use storage::{
    CounterDelta, CredentialRecord, EventFilter, EventRecord, Page, PageRequest, UserMapping,
};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressKind {
    Webhook,
    Action,
}

impl IngressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressKind::Webhook => "webhook",
            IngressKind::Action => "action",
        }
    }
}

#[derive(Debug)]
pub enum Received {
    Stored {
        event_id: String,
    },
    Duplicate,
    /// The provider's handshake, answered and not stored.
    Handshake {
        content_type: String,
        body: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("no such credential")]
    NotFound,
    /// Refused by verification; `code` is stable, `reason` is for people.
    #[error("{reason}")]
    Rejected { code: &'static str, reason: String },
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    Internal(#[from] AppError),
}

impl From<StoreError> for IngressError {
    fn from(e: StoreError) -> Self {
        IngressError::Internal(e.into())
    }
}

type CounterKey = (String, &'static str, String);

/// Ingress counters: totals since start (for `/metrics`) and increments not
/// yet written to storage (flushed every second, so a credential's view sums
/// every replica's counts).
#[derive(Default)]
pub struct Counters {
    inner: Mutex<(HashMap<CounterKey, u64>, HashMap<CounterKey, u64>)>,
}

impl Counters {
    pub fn add(&self, credential: &str, kind: IngressKind, outcome: &str) {
        let key = (credential.to_string(), kind.as_str(), outcome.to_string());
        let mut g = self.inner.lock().expect("counters poisoned");
        *g.0.entry(key.clone()).or_default() += 1;
        *g.1.entry(key).or_default() += 1;
    }

    /// The increments not yet stored, leaving none behind.
    pub fn take_pending(&self) -> Vec<CounterDelta> {
        let mut g = self.inner.lock().expect("counters poisoned");
        g.1.drain()
            .map(|((c, k, o), n)| CounterDelta {
                credential_id: c,
                kind: k.into(),
                outcome: o,
                count: n,
            })
            .collect()
    }

    /// Puts back increments whose write failed.
    pub fn restore(&self, deltas: Vec<CounterDelta>) {
        let mut g = self.inner.lock().expect("counters poisoned");
        for d in deltas {
            let kind = if d.kind == "action" {
                "action"
            } else {
                "webhook"
            };
            *g.1.entry((d.credential_id, kind, d.outcome)).or_default() += d.count;
        }
    }

    fn pending_for(&self, credential: &str) -> Vec<CounterDelta> {
        let g = self.inner.lock().expect("counters poisoned");
        g.1.iter()
            .filter(|(k, _)| k.0 == credential)
            .map(|((c, k, o), n)| CounterDelta {
                credential_id: c.clone(),
                kind: (*k).into(),
                outcome: o.clone(),
                count: *n,
            })
            .collect()
    }

    /// The Prometheus text exposition of the totals.
    pub fn render(&self) -> String {
        let g = self.inner.lock().expect("counters poisoned");
        let mut rows: Vec<_> = g.0.iter().collect();
        rows.sort();
        let mut out = String::from(
            "# HELP latchkey_ingress_total Deliveries received on credential URLs since start, by outcome.\n# TYPE latchkey_ingress_total counter\n",
        );
        for ((c, k, o), n) in rows {
            out.push_str(&format!("latchkey_ingress_total{{credential_id=\"{c}\",kind=\"{k}\",outcome=\"{o}\"}} {n}\n"));
        }
        out
    }
}

fn rejected(r: &Rejection) -> IngressError {
    IngressError::Rejected {
        code: r.code(),
        reason: r.to_string(),
    }
}

fn malformed(e: ParseError) -> IngressError {
    match e {
        ParseError::Malformed(m) => IngressError::Malformed(m),
        ParseError::Script(m) => IngressError::Malformed(format!("the parser script failed: {m}")),
        ParseError::NotAParser => {
            IngressError::Malformed("the credential's parser cannot read this callback".into())
        }
    }
}

/// Credentials ingress has read recently, as stored: the record and its
/// sealed secrets (ciphertext only; a secret is opened per delivery and
/// dropped after). A delivery verified against a remembered credential is
/// stored only if the credential is still at that version, checked in the
/// event's own write transaction ([`storage::NewEvent`]); otherwise the
/// credential is read again and the delivery handled anew. So a change made
/// on any replica applies to the next delivery, and a hot credential costs
/// no read per delivery.
pub struct IngressCredentials {
    cache: quick_cache::sync::Cache<String, Arc<IngressCredential>>,
}

/// Credentials ingress remembers, at most.
pub const INGRESS_CREDENTIALS: usize = 4096;

impl Default for IngressCredentials {
    fn default() -> Self {
        IngressCredentials {
            cache: quick_cache::sync::Cache::new(INGRESS_CREDENTIALS),
        }
    }
}

impl IngressCredentials {
    pub fn forget(&self, credential_id: &str) {
        self.cache.remove(credential_id);
    }
}

pub struct IngressCredential {
    record: storage::CredentialRecord,
    sealed: Vec<storage::SealedSecret>,
}

/// How often one delivery is handled again because its credential changed
/// while it was being handled.
const INGRESS_ATTEMPTS: usize = 3;

/// A delivery verified and parsed, ready to store.
enum Checked {
    /// The event, and whether it should have a user (an app user id, or a
    /// mapper that reads the payload): stored without one, it counts as
    /// `unmapped_user`.
    Event(Box<storage::NewEvent>, bool),
    Handshake(String, String),
}

impl App {
    /// Handles one delivery to `/hooks/{id}` or `/actions/{id}`.
    pub async fn receive(
        &self,
        kind: IngressKind,
        credential_id: &str,
        req: Inbound,
    ) -> Result<Received, IngressError> {
        if !domain::ids::is_id("cred", credential_id) {
            return Err(IngressError::NotFound);
        }
        let result = self.receive_checked(kind, credential_id, &req).await;
        let outcome = match &result {
            Ok(Received::Stored { .. }) => "accepted".to_string(),
            Ok(Received::Duplicate) => "duplicate".to_string(),
            Ok(Received::Handshake { .. }) => "handshake".to_string(),
            Err(IngressError::Rejected { code, .. }) => format!("rejected:{code}"),
            Err(IngressError::Malformed(_)) => "rejected:malformed_payload".to_string(),
            Err(IngressError::NotFound) => return result,
            Err(_) => "error".to_string(),
        };
        self.counters.add(credential_id, kind, &outcome);
        result
    }

    /// The credential as stored now, remembered for the next delivery.
    async fn read_ingress_credential(
        &self,
        credential_id: &str,
    ) -> Result<Arc<IngressCredential>, IngressError> {
        let Some((record, sealed)) = self.store.get_sealed_by_id(credential_id).await? else {
            self.ingress_credentials.forget(credential_id);
            return Err(IngressError::NotFound);
        };
        let fresh = Arc::new(IngressCredential { record, sealed });
        self.ingress_credentials
            .cache
            .insert(credential_id.to_string(), fresh.clone());
        Ok(fresh)
    }

    async fn receive_checked(
        &self,
        kind: IngressKind,
        credential_id: &str,
        req: &Inbound,
    ) -> Result<Received, IngressError> {
        let (mut credential, mut fresh) = match self.ingress_credentials.cache.get(credential_id) {
            Some(c) => (c, false),
            None => (self.read_ingress_credential(credential_id).await?, true),
        };
        for _ in 0..INGRESS_ATTEMPTS {
            let checked = self.check_delivery(kind, &credential, req).await;
            // A remembered credential may be older than the one the provider
            // signed with, or than its parser: an answer that stores nothing
            // (a refusal, a handshake) is given only once the credential
            // read now is the same.
            if !fresh && !matches!(checked, Ok(Checked::Event(..))) {
                let current = self.read_ingress_credential(credential_id).await?;
                let same = current.record.version == credential.record.version
                    && current.record.kek_id == credential.record.kek_id;
                (credential, fresh) = (current, true);
                if !same {
                    continue;
                }
            }
            let (new, expect_user) = match checked? {
                Checked::Handshake(content_type, body) => {
                    return Ok(Received::Handshake { content_type, body })
                }
                Checked::Event(new, expect_user) => (*new, expect_user),
            };
            let id = new.event.id.clone();
            match self.store.store_event(new).await? {
                storage::EventStored::Stored { user_id } => {
                    if user_id.is_none() && expect_user {
                        self.counters.add(credential_id, kind, "unmapped_user");
                    }
                    return Ok(Received::Stored { event_id: id });
                }
                storage::EventStored::Duplicate => return Ok(Received::Duplicate),
                storage::EventStored::CredentialChanged => {
                    (credential, fresh) =
                        (self.read_ingress_credential(credential_id).await?, true);
                }
            }
        }
        Err(IngressError::Internal(AppError::Internal(anyhow::anyhow!(
            "credential {credential_id} kept changing while a delivery was handled"
        ))))
    }

    /// Verify, then answer the handshake or parse, then map the user: all
    /// but the mapping-table lookup, which the store does as it writes.
    async fn check_delivery(
        &self,
        kind: IngressKind,
        credential: &IngressCredential,
        req: &Inbound,
    ) -> Result<Checked, IngressError> {
        let (record, sealed) = (&credential.record, &credential.sealed);
        let tenant = &record.tenant_id;
        let service = |role: ServiceRole| {
            record
                .services
                .get(role.as_str())
                .cloned()
                .unwrap_or_default()
        };

        // 1. Verify, before anything else is looked at.
        let verifier = self
            .resolve_service(tenant, &service(ServiceRole::WebhookEventVerification))
            .await?
            .ok_or_else(|| rejected(&Rejection::NotAScheme))?;
        let secret = match sealed.iter().find(|s| s.field == "webhook_secret") {
            Some(s) => {
                let dek =
                    self.keys
                        .unwrap(&record.kek_id, &record.wrapped_dek, tenant, &record.id)?;
                Some(
                    dek.open(tenant, &record.id, &s.field, &s.sealed)
                        .map_err(AppError::from)?,
                )
            }
            None => None,
        };
        match &verifier.spec {
            ServiceSpec::Script { source } => {
                let Some(secret) = secret else {
                    return Err(rejected(&Rejection::NoSecret));
                };
                let (source, limits, req) = (source.clone(), self.script_limits, req.clone());
                let passed = tokio::task::spawn_blocking(move || {
                    services::script::run_verifier(&source, &secret, &req, limits)
                })
                .await
                .map_err(|e| AppError::Internal(anyhow::anyhow!("verifier task: {e}")))?
                .map_err(|e| IngressError::Rejected {
                    code: "verifier_failed",
                    reason: e.to_string(),
                })?;
                if !passed {
                    return Err(rejected(&Rejection::BadSignature));
                }
            }
            spec => verify::verify(spec, secret.as_ref(), req).map_err(|r| rejected(&r))?,
        }

        // 2. Handshake or parse.
        let parser_role = match kind {
            IngressKind::Webhook => ServiceRole::WebhookParser,
            IngressKind::Action => ServiceRole::ActionCallbackParser,
        };
        let parser = self
            .resolve_service(tenant, &service(parser_role))
            .await?
            .ok_or_else(|| {
                IngressError::Malformed("the credential's parser no longer exists".into())
            })?;
        let event = match self.run_parser(kind, parser.spec, req).await? {
            Parsed::Handshake(content_type, body) => {
                return Ok(Checked::Handshake(content_type, body))
            }
            Parsed::Event(e) => e,
        };

        // 3. Map the app's user to a platform user (a mapping table is read
        //    by the store, in the event's write).
        let mapper = self
            .resolve_service(tenant, &service(ServiceRole::UserIdMapper))
            .await?;
        let mapper_reads_payload = mapper.as_ref().is_some_and(|m| {
            matches!(
                m.spec,
                ServiceSpec::PayloadUser { .. } | ServiceSpec::Script { .. }
            )
        });
        let expect_user = event.app_user_id.is_some() || mapper_reads_payload;
        let mut map_user = false;
        let user_id = match (mapper.map(|m| m.spec), &event.app_user_id) {
            (None, _) => None,
            (Some(ServiceSpec::MappingTable), app_user) => {
                map_user = app_user.is_some();
                None
            }
            (Some(ServiceSpec::Script { source }), app_user) => {
                let (app_user, payload, limits) =
                    (app_user.clone(), event.payload.clone(), self.script_limits);
                tokio::task::spawn_blocking(move || {
                    ::services::script::run_mapper(&source, app_user.as_deref(), &payload, limits)
                })
                .await
                .map_err(|e| AppError::Internal(anyhow::anyhow!("mapper task: {e}")))?
                .unwrap_or_else(|e| {
                    tracing::warn!(credential = %record.id, error = %e, "user id mapper script failed");
                    None
                })
            }
            // Identity and payload mappers are pure and quick.
            (Some(spec), app_user) => {
                parse::map_user(&spec, app_user.as_deref(), &event.payload).unwrap_or(None)
            }
        };

        // 4. What the store writes; the answer waits for its durable commit.
        Ok(Checked::Event(
            Box::new(storage::NewEvent {
                event: EventRecord {
                    id: domain::ids::new_id("evt"),
                    tenant_id: tenant.clone(),
                    credential_id: record.id.clone(),
                    kind: kind.as_str().into(),
                    valid_request: event.valid_request,
                    app_user_id: event.app_user_id,
                    user_id,
                    event_type: event.event_type,
                    delivery_id: event.delivery_id,
                    payload: event.payload,
                    received_at: now(),
                },
                credential_version: Some(record.version),
                map_user,
            }),
            expect_user,
        ))
    }

    async fn run_parser(
        &self,
        kind: IngressKind,
        spec: ServiceSpec,
        req: &Inbound,
    ) -> Result<Parsed, IngressError> {
        let is_script = matches!(spec, ServiceSpec::Script { .. });
        let work = move |req: &Inbound| -> Result<Parsed, ParseError> {
            Ok(match kind {
                IngressKind::Webhook => match parse::parse_webhook(&spec, req)? {
                    WebhookOutcome::Event(e) => Parsed::Event(e),
                    WebhookOutcome::Handshake { content_type, body } => {
                        Parsed::Handshake(content_type, body)
                    }
                },
                IngressKind::Action => {
                    let a = parse::parse_action(&spec, req)?;
                    let mut event = a.event;
                    // The action's own fields travel with the payload's normal form.
                    if let serde_json::Value::Object(map) = &mut event.payload {
                        for (k, v) in [
                            ("action_id", a.action_id),
                            ("value", a.value),
                            ("response_url", a.response_url),
                        ] {
                            if let Some(v) = v {
                                map.entry(format!("_latchkey_{k}")).or_insert(v.into());
                            }
                        }
                    }
                    Parsed::Event(event)
                }
            })
        };
        if !is_script {
            // Built-in parsers are a few microseconds of work: run them in place.
            return work(req).map_err(malformed);
        }
        // Scripts are CPU work with a wall-time limit: keep them off the async threads.
        let req = req.clone();
        tokio::task::spawn_blocking(move || work(&req))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("parser task: {e}")))?
            .map_err(malformed)
    }

    pub async fn list_events(
        &self,
        p: &Principal,
        filter: EventFilter,
        page: &PageParams,
    ) -> AppResult<Page<EventRecord>> {
        let (limit, after) = page.resolve().map_err(AppError::Validation)?;
        if let Some(k) = &filter.kind {
            if k != "webhook" && k != "action" {
                return Err(AppError::Validation(vec![FieldError::new(
                    "kind",
                    "invalid",
                    "kind is webhook or action.",
                )]));
            }
        }
        Ok(self
            .store
            .list_events(
                &p.tenant_id,
                &filter,
                PageRequest {
                    limit,
                    after: after.as_deref(),
                },
            )
            .await?)
    }

    pub async fn get_event(&self, p: &Principal, id: &str) -> AppResult<EventRecord> {
        self.store
            .get_event(&p.tenant_id, id)
            .await?
            .ok_or(AppError::NotFound("event"))
    }

    /// A credential with its ingress counters: stored ones (read with the
    /// credential, in one store read) plus this process's increments not
    /// yet flushed.
    pub async fn credential_with_counters(
        &self,
        p: &Principal,
        id: &str,
    ) -> AppResult<(CredentialRecord, Vec<CounterDelta>)> {
        let (record, all) = self
            .store
            .get_credential_with_counters(&p.tenant_id, id)
            .await?
            .ok_or(AppError::NotFound("credential"))?;
        Ok((record, self.with_pending_counters(id, all)))
    }

    /// A credential's stored counters plus this process's increments of
    /// them not yet flushed.
    pub(crate) fn with_pending_counters(
        &self,
        id: &str,
        mut all: Vec<CounterDelta>,
    ) -> Vec<CounterDelta> {
        for d in self.counters.pending_for(id) {
            match all
                .iter_mut()
                .find(|x| x.kind == d.kind && x.outcome == d.outcome)
            {
                Some(x) => x.count += d.count,
                None => all.push(d),
            }
        }
        all
    }

    /// Writes pending counter increments; on failure they are kept for the next try.
    pub async fn flush_counters(&self) {
        let pending = self.counters.take_pending();
        if pending.is_empty() {
            return;
        }
        if let Err(e) = self.store.add_counters(pending.clone()).await {
            tracing::warn!(error = %e, "could not store ingress counters; will retry");
            self.counters.restore(pending);
        }
    }
}

impl App {
    pub async fn put_user_mapping(
        &self,
        p: &Principal,
        credential: &str,
        app_user_id: &str,
        user_id: &str,
    ) -> AppResult<UserMapping> {
        p.require(Role::Developer, "A viewer cannot change user mappings.")?;
        let mut errors = Vec::new();
        for (field, v) in [("app_user_id", app_user_id), ("user_id", user_id)] {
            if v.trim().is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    field,
                    "invalid",
                    "Use 1 to 256 characters without control characters.",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(AppError::Validation(errors));
        }
        let mapping = UserMapping {
            app_user_id: app_user_id.into(),
            user_id: user_id.into(),
            created_at: now(),
        };
        let audit = p.audit(
            "user_mapping.put",
            "credential",
            credential,
            serde_json::json!({ "app_user_id": app_user_id, "user_id": user_id }),
        );
        self.store
            .put_user_mapping(&p.tenant_id, credential, mapping.clone(), audit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => AppError::NotFound("credential"),
                other => other.into(),
            })?;
        Ok(mapping)
    }

    pub async fn delete_user_mapping(
        &self,
        p: &Principal,
        credential: &str,
        app_user_id: &str,
    ) -> AppResult<()> {
        p.require(Role::Developer, "A viewer cannot change user mappings.")?;
        let audit = p.audit(
            "user_mapping.delete",
            "credential",
            credential,
            serde_json::json!({ "app_user_id": app_user_id }),
        );
        self.store
            .delete_user_mapping(&p.tenant_id, credential, app_user_id, audit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => AppError::NotFound("user mapping"),
                other => other.into(),
            })
    }

    pub async fn list_user_mappings(
        &self,
        p: &Principal,
        credential: &str,
        page: &PageParams,
    ) -> AppResult<Page<UserMapping>> {
        let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(AppError::Validation(vec![FieldError::new(
                "limit",
                "out_of_range",
                format!("limit must be 1 to {MAX_LIMIT}."),
            )]));
        }
        // Mappings page by app user id, which the cursor carries as it is.
        let after = page.cursor.as_deref();
        self.store
            .list_user_mappings(&p.tenant_id, credential, PageRequest { limit, after })
            .await
            .map_err(|e| match e {
                StoreError::NotFound => AppError::NotFound("credential"),
                other => other.into(),
            })
    }
}

enum Parsed {
    Event(NormalEvent),
    Handshake(String, String),
}
