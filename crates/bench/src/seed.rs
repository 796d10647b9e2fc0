//! Stores many credentials straight through the storage contract, while no
//! server runs: a million creates over HTTP would take the whole time budget.
//! Each seeded credential is a real one: a copy of a credential the server
//! itself created (same services, scopes, status), with its own id, name,
//! data key wrapped by the installation's master key, and an API key sealed
//! under that data key, exactly as `App::create_credential` seals them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use crypto::MasterKey;
use secrecy::{ExposeSecret, SecretString};
use storage::{AuditEntry, CredentialRecord, ImportItem, SealedSecret, SecretMeta, Store};

/// Words of the generated names, so searches have something to find: each
/// customer word is in 1% of the names, each purpose word in 12.5%.
const CUSTOMER_HEADS: [&str; 10] = ["ac", "bo", "ci", "du", "ek", "fa", "go", "hu", "ix", "jo"];
const CUSTOMER_TAILS: [&str; 10] = [
    "mex", "ran", "tel", "vor", "lix", "sup", "dan", "kor", "pim", "zat",
];
pub const PURPOSES: [&str; 8] = [
    "billing", "payments", "alerts", "crm", "sync", "reports", "support", "deploy",
];

pub fn customer(i: u64) -> String {
    let i = (i % 100) as usize;
    format!("{}{}", CUSTOMER_HEADS[i % 10], CUSTOMER_TAILS[i / 10])
}

/// The name of the n-th credential of a run, seeded or created.
pub fn name(n: u64) -> String {
    format!("{} {} {n:07}", customer(n / 8), PURPOSES[(n % 8) as usize])
}

/// The integration of the n-th credential: a third Stripe, the rest GitHub.
pub fn integration(n: u64) -> &'static str {
    if n.is_multiple_of(3) {
        "stripe"
    } else {
        "github"
    }
}

/// An API key of the integration's format (not a real one).
pub fn api_key(n: u64) -> String {
    if integration(n) == "stripe" {
        format!("sk_test_{n:024}")
    } else {
        format!("ghp_{n:036}")
    }
}

/// What a seed left behind for the scenarios to use.
pub struct Seeded {
    /// Ids with their number: every `SAMPLE_EVERY`-th seeded credential.
    pub sample: Vec<(String, u64)>,
    pub elapsed: Duration,
}

pub const SAMPLE_EVERY: u64 = 10;
const BATCH: u64 = 2_000;

/// What to seed: the credentials numbered `numbers` (of `total`, for the
/// progress lines) into `tenant`, each a copy of its integration's
/// template, `workers` batches at a time.
pub struct Plan {
    pub store: Arc<dyn Store>,
    pub kek: Arc<MasterKey>,
    pub tenant: String,
    /// The token id the audit entries name.
    pub actor: String,
    pub templates: Vec<CredentialRecord>,
    pub numbers: std::ops::Range<u64>,
    pub total: u64,
    pub workers: usize,
}

pub async fn seed(
    plan: Plan,
    progress: impl Fn(String) + Send + Sync + 'static,
) -> anyhow::Result<Seeded> {
    let Plan {
        store,
        kek,
        tenant,
        actor,
        templates,
        numbers,
        total,
        workers,
    } = plan;
    let (start, count) = (numbers.start, numbers.end);
    for i in ["stripe", "github"] {
        if !templates.iter().any(|t| t.integration_id == i) {
            bail!("no {i} template credential to seed from");
        }
    }
    let templates = Arc::new(templates);
    let next_batch = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = Arc::new(progress);
    let reporter = tokio::spawn({
        let (done, progress) = (done.clone(), progress.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let d = done.load(Ordering::Relaxed);
                let rate = d as f64 / started.elapsed().as_secs_f64();
                progress(format!("seeded {}/{total} ({rate:.0}/s)", start + d));
            }
        }
    });
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (store, kek, templates, next_batch, done) = (
            store.clone(),
            kek.clone(),
            templates.clone(),
            next_batch.clone(),
            done.clone(),
        );
        let (tenant, actor) = (tenant.to_string(), actor.to_string());
        tasks.push(tokio::spawn(async move {
            let mut sample = Vec::new();
            loop {
                let first = start + next_batch.fetch_add(1, Ordering::Relaxed) * BATCH;
                if first >= count {
                    break;
                }
                let last = (first + BATCH).min(count);
                // Sealed on a blocking thread: the batches are sealed in
                // parallel however few workers the load generator's
                // runtime has (`--load-threads`).
                let (kek, templates, owner) = (kek.clone(), templates.clone(), tenant.clone());
                let (items, sampled) = tokio::task::spawn_blocking(move || {
                    let mut items = Vec::with_capacity((last - first) as usize);
                    let mut sampled = Vec::new();
                    for n in first..last {
                        let template = templates
                            .iter()
                            .find(|t| t.integration_id == integration(n))
                            .expect("checked above");
                        let (record, secrets) = credential(&kek, &owner, template, n)?;
                        if n % SAMPLE_EVERY == 0 {
                            sampled.push((record.id.clone(), n));
                        }
                        items.push(ImportItem::Insert(record, secrets));
                    }
                    anyhow::Ok((items, sampled))
                })
                .await??;
                sample.extend(sampled);
                let audit = AuditEntry {
                    id: domain::ids::audit(),
                    tenant_id: tenant.clone(),
                    actor_id: actor.clone(),
                    actor_name: "benchmark seeder".into(),
                    action: "credential.import".into(),
                    target_type: "tenant".into(),
                    target_id: tenant.clone(),
                    at: chrono::Utc::now(),
                    source: None,
                    details: serde_json::json!({ "credentials": last - first }),
                };
                store
                    .import_credentials(items, audit)
                    .await
                    .with_context(|| format!("seeding credentials {first}..{last}"))?;
                done.fetch_add(last - first, Ordering::Relaxed);
            }
            anyhow::Ok(sample)
        }));
    }
    let mut sample = Vec::new();
    for t in tasks {
        sample.extend(t.await??);
    }
    reporter.abort();
    sample.sort_by_key(|(_, n)| *n);
    Ok(Seeded {
        sample,
        elapsed: started.elapsed(),
    })
}

/// The n-th credential: the template with its own identity and sealed key.
fn credential(
    kek: &MasterKey,
    tenant: &str,
    template: &CredentialRecord,
    n: u64,
) -> anyhow::Result<(CredentialRecord, Vec<SealedSecret>)> {
    let id = domain::ids::credential();
    let (dek, wrapped_dek) = kek.new_data_key(tenant, &id)?;
    let key = SecretString::from(api_key(n));
    let field = domain::credential::API_KEY_FIELD;
    let sealed = dek.seal(tenant, &id, field, &key)?;
    let now = chrono::Utc::now();
    let record = CredentialRecord {
        id: id.clone(),
        name: name(n),
        secret_fields: vec![SecretMeta {
            field: field.into(),
            last4: crypto::last4(&key),
        }],
        version: 1,
        kek_id: kek.id().into(),
        wrapped_dek,
        created_at: now,
        updated_at: now,
        ..template.clone()
    };
    Ok((
        record,
        vec![SealedSecret {
            field: field.into(),
            sealed,
        }],
    ))
}

/// Opens the API key of seeded credential `id` (number `n`) with the master
/// key, as the server would, and checks it is the one sealed.
pub async fn check_opens(
    store: &dyn Store,
    kek: &MasterKey,
    tenant: &str,
    id: &str,
    n: u64,
) -> anyhow::Result<()> {
    let (record, sealed) = store
        .get_sealed(tenant, id)
        .await?
        .with_context(|| format!("seeded credential {id} is not there"))?;
    let dek = kek.unwrap_data_key(&record.wrapped_dek, tenant, id)?;
    let field = domain::credential::API_KEY_FIELD;
    let secret = sealed
        .iter()
        .find(|s| s.field == field)
        .with_context(|| format!("seeded credential {id} has no sealed {field}"))?;
    let opened = dek.open(tenant, id, field, &secret.sealed)?;
    if opened.expose_secret() != api_key(n) {
        bail!("seeded credential {id} opened to another key");
    }
    Ok(())
}
