//! The storage contract, checked on every backend by the same scenarios:
//! each runs on a fresh SQLite file and on a fresh PostgreSQL schema.
//!
//! PostgreSQL is `postgres://postgres@127.0.0.1:5432/test` unless
//! `LATCHKEY_TEST_POSTGRES_URL` says otherwise; each scenario gets a schema
//! `t_<random>` of its own, dropped afterwards. When the server does not
//! answer, the PostgreSQL half fails under CI (env `CI` set) and is skipped,
//! with a note, elsewhere.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use storage::*;
use tokio::task::JoinSet;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn postgres_url() -> String {
    std::env::var("LATCHKEY_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into())
}

fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// A fresh schema name on a server that answers, with a connection to drop
/// the schema by.
struct Schema {
    name: String,
    admin: tokio_postgres::Client,
}

impl Schema {
    async fn new() -> std::result::Result<Schema, String> {
        let mut config: tokio_postgres::Config =
            postgres_url().parse().map_err(|e| describe(&e))?;
        config.connect_timeout(std::time::Duration::from_secs(5));
        let (admin, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| describe(&e))?;
        tokio::spawn(connection);
        Ok(Schema {
            name: fresh_schema_name(),
            admin,
        })
    }

    /// Runs `scenario` on a task of its own, so that the schema is dropped
    /// even when it panics; then drops it and passes any panic on.
    async fn run(self, scenario: impl Future<Output = ()> + Send + 'static) {
        let outcome = tokio::spawn(scenario).await;
        self.drop_schema().await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    async fn drop_schema(self) {
        self.admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .await
            .expect("drop the test schema");
    }
}

fn fresh_schema_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_usize(N.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("t_{:016x}", h.finish())
}

/// A server for the PostgreSQL half, or none (skipped) outside CI.
async fn postgres_or_skip() -> Option<Schema> {
    match Schema::new().await {
        Ok(schema) => Some(schema),
        Err(reason) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            panic!("PostgreSQL is required under CI and does not answer: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping PostgreSQL: {reason}");
            None
        }
    }
}

/// Runs `scenario` on a fresh SQLite store, then on a fresh PostgreSQL schema.
async fn each_backend<F, Fut>(scenario: F)
where
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    eprintln!("== backend: sqlite");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("contract.db")).expect("open SQLite");
    scenario(Arc::new(sqlite)).await;

    let Some(schema) = postgres_or_skip().await else {
        return;
    };
    eprintln!("== backend: postgres (schema {})", schema.name);
    let store = PostgresStore::connect_in_schema(&postgres_url(), &schema.name)
        .await
        .expect("connect to PostgreSQL and migrate");
    schema.run(scenario(Arc::new(store))).await;
}

/// More rows than a search scans first, newest first (2,000 in both
/// backends): a name older than these, matched by none of them, is found
/// only through the name index (PostgreSQL scans on only past some matches).
const SEARCH_WINDOW_ROWS: usize = 2_100;

// ---- records -------------------------------------------------------------

/// A time in whole milliseconds (what both backends keep).
fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_123 + secs * 1000)
        .unwrap()
}

fn tenant(id: &str, name: &str) -> TenantRecord {
    TenantRecord {
        id: id.into(),
        name: name.into(),
        is_operator: id == "ten_a",
        created_at: t(0),
    }
}

fn hash(n: u8) -> [u8; 32] {
    let mut h = [n; 32];
    h[0] = 0xfe;
    h
}

fn token(id: &str, tenant: &str, n: u8) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        name: format!("token {id}"),
        role: "admin".into(),
        hash: hash(n),
        created_at: t(1),
        created_by: "test".into(),
        revoked_at: None,
    }
}

fn audit(tenant: &str, action: &str) -> AuditEntry {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    AuditEntry {
        id: format!("aud_{n:026}"),
        tenant_id: tenant.into(),
        actor_id: "tok_a1".into(),
        actor_name: "tester".into(),
        action: action.into(),
        target_type: "credential".into(),
        target_id: "x".into(),
        at: t(2),
        source: Some("127.0.0.1".into()),
        details: json!({ "fields": ["name", "scopes"] }),
    }
}

fn credential(tenant: &str, id: &str, name: &str, integration: &str) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        name: name.into(),
        description: format!("about {name}"),
        integration_id: integration.into(),
        auth_type: "api_key".into(),
        services: BTreeMap::new(),
        scopes: vec!["read".into(), "write".into()],
        params: BTreeMap::from([("region".to_string(), "eu".to_string())]),
        secret_fields: vec![SecretMeta {
            field: "api_key".into(),
            last4: Some("1234".into()),
        }],
        status: "unverified".into(),
        status_message: None,
        checked_at: None,
        version: 1,
        kek_id: "kek_1".into(),
        wrapped_dek: vec![1, 2, 3, 0, 255],
        created_at: t(3),
        created_by: "tok_a1".into(),
        updated_at: t(3),
        updated_by: "tok_a1".into(),
    }
}

fn secret(field: &str, sealed: &[u8]) -> SealedSecret {
    SealedSecret {
        field: field.into(),
        sealed: sealed.to_vec(),
    }
}

fn secrets(list: &[SealedSecret]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|s| (s.field.clone(), s.sealed.clone()))
        .collect()
}

fn service(tenant: &str, id: &str, name: &str) -> ServiceRecord {
    ServiceRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        name: name.into(),
        role: "webhook".into(),
        description: "a service".into(),
        integrations: vec!["stripe".into()],
        spec: json!({ "path": "/hooks", "verify": { "header": "X-Sig", "ttl": 300 } }),
        version: 1,
        created_at: t(4),
        created_by: "tok_a1".into(),
        updated_at: t(4),
        updated_by: "tok_a1".into(),
    }
}

fn event(
    tenant: &str,
    id: &str,
    credential: &str,
    kind: &str,
    delivery: Option<&str>,
) -> EventRecord {
    EventRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        credential_id: credential.into(),
        kind: kind.into(),
        valid_request: true,
        app_user_id: Some("app_u1".into()),
        user_id: Some("user_1".into()),
        event_type: "invoice.paid".into(),
        delivery_id: delivery.map(str::to_string),
        payload: json!({ "id": id, "amount": 1250, "ratio": 0.5, "tags": ["a", "ü"], "nested": { "ok": true, "none": null } }),
        received_at: t(5),
    }
}

fn first(limit: usize) -> PageRequest<'static> {
    PageRequest { limit, after: None }
}

fn err<T: Debug>(r: Result<T>) -> StoreError {
    r.expect_err("the call should have failed")
}

/// Two tenants, `ten_a` ("Acme", token tok_a1) and `ten_b` ("Beta", tok_b1).
async fn two_tenants(s: &Arc<dyn Store>) {
    s.create_tenant(tenant("ten_a", "Acme"), token("tok_a1", "ten_a", 1), None)
        .await
        .unwrap();
    s.create_tenant(tenant("ten_b", "Beta"), token("tok_b1", "ten_b", 2), None)
        .await
        .unwrap();
}

/// Imports `SEARCH_WINDOW_ROWS` credentials named "Filler n", in one write,
/// with ids `{id_prefix}0000`… (newer than any id that sorts below them).
async fn add_fillers(s: &Arc<dyn Store>, tenant: &str, id_prefix: &str) {
    let fillers = (0..SEARCH_WINDOW_ROWS)
        .map(|n| {
            let id = format!("{id_prefix}{n:04}");
            ImportItem::Insert(
                credential(tenant, &id, &format!("Filler {n}"), "github"),
                vec![],
            )
        })
        .collect();
    s.import_credentials(fillers, audit(tenant, "credential.import"))
        .await
        .unwrap();
}

async fn audit_count(s: &Arc<dyn Store>, tenant: &str) -> usize {
    s.list_audit(tenant, first(10_000))
        .await
        .unwrap()
        .items
        .len()
}

// ---- scenarios -----------------------------------------------------------

#[tokio::test]
async fn tenants_and_tokens() {
    each_backend(|s| async move {
        assert_eq!(s.tenant_count().await.unwrap(), 0);
        s.create_tenant(
            tenant("ten_a", "Acme"),
            token("tok_a1", "ten_a", 1),
            Some(audit("ten_a", "tenant.create")),
        )
        .await
        .unwrap();
        s.create_tenant(tenant("ten_b", "Beta"), token("tok_b1", "ten_b", 2), None)
            .await
            .unwrap();
        assert_eq!(audit_count(&s, "ten_a").await, 1);

        // Tenant names are unique whatever their case; nothing of a refused one stays.
        let e = err(s
            .create_tenant(tenant("ten_c", "ACME"), token("tok_c1", "ten_c", 3), None)
            .await);
        assert!(matches!(e, StoreError::Conflict), "{e:?}");
        assert!(s.find_token(hash(3)).await.unwrap().is_none());
        assert_eq!(s.tenant_count().await.unwrap(), 2);

        // Pages in descending id order; the cursor is the last id.
        let p = s.list_tenants(first(1)).await.unwrap();
        assert_eq!(p.items, [tenant("ten_b", "Beta")]);
        assert_eq!(p.next_cursor.as_deref(), Some("ten_b"));
        let p = s
            .list_tenants(PageRequest {
                limit: 1,
                after: Some("ten_b"),
            })
            .await
            .unwrap();
        assert_eq!(p.items, [tenant("ten_a", "Acme")]);
        assert_eq!(p.next_cursor, None);

        s.create_token(token("tok_a2", "ten_a", 4), audit("ten_a", "token.create"))
            .await
            .unwrap();
        let p = s.list_tokens("ten_a", first(1)).await.unwrap();
        assert_eq!(p.items, [token("tok_a2", "ten_a", 4)]);
        let p = s
            .list_tokens(
                "ten_a",
                PageRequest {
                    limit: 1,
                    after: p.next_cursor.as_deref(),
                },
            )
            .await
            .unwrap();
        assert_eq!(p.items, [token("tok_a1", "ten_a", 1)]);
        assert_eq!(p.next_cursor, None);
        let b: Vec<_> = s.list_tokens("ten_b", first(10)).await.unwrap().items;
        assert_eq!(b, [token("tok_b1", "ten_b", 2)]);

        let (found, of) = s.find_token(hash(4)).await.unwrap().unwrap();
        assert_eq!(found, token("tok_a2", "ten_a", 4));
        assert_eq!(of, tenant("ten_a", "Acme"));

        // Revoking: only in its own tenant, once; a revoked token is not found.
        let e = err(s
            .revoke_token("ten_b", "tok_a2", t(10), audit("ten_b", "token.revoke"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        s.revoke_token("ten_a", "tok_a2", t(10), audit("ten_a", "token.revoke"))
            .await
            .unwrap();
        assert!(s.find_token(hash(4)).await.unwrap().is_none());
        let e = err(s
            .revoke_token("ten_a", "tok_a2", t(11), audit("ten_a", "token.revoke"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        let listed = s.list_tokens("ten_a", first(1)).await.unwrap().items;
        assert_eq!(listed[0].revoked_at, Some(t(10)));
        assert_eq!(audit_count(&s, "ten_a").await, 3);
        assert_eq!(audit_count(&s, "ten_b").await, 0);

        // Installation metadata.
        assert_eq!(s.meta_get("key_check").await.unwrap(), None);
        assert!(s
            .meta_put_if_absent("key_check", vec![1, 0, 2])
            .await
            .unwrap());
        assert!(!s.meta_put_if_absent("key_check", vec![9]).await.unwrap());
        assert_eq!(s.meta_get("key_check").await.unwrap(), Some(vec![1, 0, 2]));
        assert!(!s.has_credentials().await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn credential_lifecycle() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        let mut stripe = credential("ten_a", "cred_1", "Stripe Live", "stripe");
        stripe.checked_at = Some(t(7));
        s.insert_credential(
            stripe.clone(),
            vec![
                secret("webhook_secret", b"sealed-w"),
                // A field given twice is stored once, the last value.
                secret("api_key", b"sealed-first"),
                secret("api_key", b"sealed-k\0"),
            ],
            audit("ten_a", "credential.create"),
        )
        .await
        .unwrap();
        assert!(s.has_credentials().await.unwrap());
        assert_eq!(
            s.get_credential("ten_a", "cred_1").await.unwrap(),
            Some(stripe.clone())
        );
        let (rec, sealed) = s.get_sealed("ten_a", "cred_1").await.unwrap().unwrap();
        assert_eq!(rec, stripe);
        assert_eq!(
            secrets(&sealed),
            [
                ("api_key".to_string(), b"sealed-k\0".to_vec()),
                ("webhook_secret".to_string(), b"sealed-w".to_vec())
            ]
        );
        // Other tenants see nothing.
        assert_eq!(s.get_credential("ten_b", "cred_1").await.unwrap(), None);
        assert!(s.get_sealed("ten_b", "cred_1").await.unwrap().is_none());
        assert_eq!(
            s.credential_id_by_name("ten_a", "stripe LIVE")
                .await
                .unwrap()
                .as_deref(),
            Some("cred_1")
        );
        assert_eq!(
            s.credential_id_by_name("ten_b", "Stripe Live")
                .await
                .unwrap(),
            None
        );

        // A name clash (any ASCII case) names the credential that has the name,
        // and leaves no trace: no record, no audit entry.
        let audits = audit_count(&s, "ten_a").await;
        let e = err(s
            .insert_credential(
                credential("ten_a", "cred_2", "STRIPE live", "stripe"),
                vec![],
                audit("ten_a", "credential.create"),
            )
            .await);
        assert!(
            matches!(&e, StoreError::NameTaken(id) if id == "cred_1"),
            "{e:?}"
        );
        assert_eq!(s.get_credential("ten_a", "cred_2").await.unwrap(), None);
        assert_eq!(audit_count(&s, "ten_a").await, audits);
        // Names are per tenant.
        s.insert_credential(
            credential("ten_b", "cred_2", "Stripe Live", "stripe"),
            vec![],
            audit("ten_b", "credential.create"),
        )
        .await
        .unwrap();
        // Case folding is SQLite's: ASCII letters only.
        for (id, name) in [("cred_3", "Élan"), ("cred_4", "élan")] {
            s.insert_credential(
                credential("ten_a", id, name, "github"),
                vec![],
                audit("ten_a", "credential.create"),
            )
            .await
            .unwrap();
        }
        s.insert_credential(
            credential("ten_a", "cred_5", "GitHub", "github"),
            vec![],
            audit("ten_a", "credential.create"),
        )
        .await
        .unwrap();

        // A mutation and its audit entry are one: a failing audit write undoes it.
        let mut taken_audit = audit("ten_a", "credential.create");
        taken_audit.id = s.list_audit("ten_a", first(1)).await.unwrap().items[0]
            .id
            .clone();
        let e = err(s
            .insert_credential(
                credential("ten_a", "cred_6", "Orphan", "x"),
                vec![],
                taken_audit,
            )
            .await);
        assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
        assert_eq!(s.get_credential("ten_a", "cred_6").await.unwrap(), None);
        assert_eq!(
            s.credential_id_by_name("ten_a", "orphan").await.unwrap(),
            None
        );

        // Updates: version checked, tenant scoped, names still unique.
        let mut next = stripe.clone();
        next.version = 2;
        next.name = "Stripe Prod".into();
        next.scopes = vec!["read".into()];
        next.services = BTreeMap::from([("webhooks".to_string(), "svc_9".to_string())]);
        next.updated_at = t(8);
        next.updated_by = "tok_a2".into();
        let update = |record: CredentialRecord, expected_version| CredentialUpdate {
            record,
            expected_version,
            put_secrets: vec![secret("api_key", b"sealed-k2")],
            remove_secrets: vec!["webhook_secret".into()],
        };
        let e = err(s
            .update_credential(update(next.clone(), 7), audit("ten_a", "credential.update"))
            .await);
        assert!(
            matches!(e, StoreError::VersionMismatch { current: 1 }),
            "{e:?}"
        );
        let mut elsewhere = next.clone();
        elsewhere.tenant_id = "ten_b".into();
        elsewhere.id = "cred_1".into();
        let e = err(s
            .update_credential(update(elsewhere, 1), audit("ten_b", "credential.update"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        let mut missing = next.clone();
        missing.id = "cred_404".into();
        let e = err(s
            .update_credential(update(missing, 1), audit("ten_a", "credential.update"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        let mut clash = next.clone();
        clash.name = "github".into();
        let e = err(s
            .update_credential(update(clash, 1), audit("ten_a", "credential.update"))
            .await);
        assert!(
            matches!(&e, StoreError::NameTaken(id) if id == "cred_5"),
            "{e:?}"
        );
        s.update_credential(update(next.clone(), 1), audit("ten_a", "credential.update"))
            .await
            .unwrap();
        let (rec, sealed) = s.get_sealed("ten_a", "cred_1").await.unwrap().unwrap();
        assert_eq!(rec, next);
        assert_eq!(
            secrets(&sealed),
            [("api_key".to_string(), b"sealed-k2".to_vec())]
        );
        // Renaming a credential to its own name in another case is no clash.
        let mut recased = next.clone();
        recased.name = "STRIPE PROD".into();
        recased.version = 3;
        s.update_credential(
            CredentialUpdate {
                record: recased.clone(),
                expected_version: 2,
                put_secrets: vec![],
                remove_secrets: vec![],
            },
            audit("ten_a", "credential.update"),
        )
        .await
        .unwrap();

        // A status check is no new version.
        s.set_credential_status(
            "ten_a",
            "cred_1",
            "valid",
            "token works",
            t(9),
            audit("ten_a", "credential.check"),
        )
        .await
        .unwrap();
        let rec = s.get_credential("ten_a", "cred_1").await.unwrap().unwrap();
        assert_eq!(
            (rec.status.as_str(), rec.status_message.as_deref()),
            ("valid", Some("token works"))
        );
        assert_eq!((rec.checked_at, rec.version), (Some(t(9)), 3));
        let e = err(s
            .set_credential_status(
                "ten_b",
                "cred_1",
                "valid",
                "",
                t(9),
                audit("ten_b", "credential.check"),
            )
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");

        // Ingress finds a credential by id alone.
        let (by_id, sealed) = s.get_sealed_by_id("cred_1").await.unwrap().unwrap();
        assert_eq!((by_id.tenant_id.as_str(), sealed.len()), ("ten_a", 1));
        assert!(s.get_sealed_by_id("cred_404").await.unwrap().is_none());

        // Times keep whole milliseconds on both backends.
        let mut precise = credential("ten_a", "cred_7", "Precise", "x");
        precise.created_at = Utc.timestamp_nanos(1_700_000_000_123_456_789);
        s.insert_credential(precise, vec![], audit("ten_a", "credential.create"))
            .await
            .unwrap();
        let got = s.get_credential("ten_a", "cred_7").await.unwrap().unwrap();
        assert_eq!(
            got.created_at,
            Utc.timestamp_millis_opt(1_700_000_000_123).unwrap()
        );

        // Deleting takes its secrets, user mappings, events and counters along.
        s.put_user_mapping(
            "ten_a",
            "cred_1",
            UserMapping {
                app_user_id: "app_u1".into(),
                user_id: "user_1".into(),
                created_at: t(10),
            },
            audit("ten_a", "mapping.put"),
        )
        .await
        .unwrap();
        assert!(s
            .insert_event(event("ten_a", "evt_1", "cred_1", "webhook", Some("d1")))
            .await
            .unwrap());
        s.add_counters(vec![CounterDelta {
            credential_id: "cred_1".into(),
            kind: "webhook".into(),
            outcome: "accepted".into(),
            count: 1,
        }])
        .await
        .unwrap();
        let e = err(s
            .delete_credential("ten_b", "cred_1", audit("ten_b", "credential.delete"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        let audits = audit_count(&s, "ten_a").await;
        s.delete_credential("ten_a", "cred_1", audit("ten_a", "credential.delete"))
            .await
            .unwrap();
        assert_eq!(audit_count(&s, "ten_a").await, audits + 1);
        assert_eq!(s.get_credential("ten_a", "cred_1").await.unwrap(), None);
        assert!(s.get_sealed_by_id("cred_1").await.unwrap().is_none());
        assert_eq!(s.find_user_mapping("cred_1", "app_u1").await.unwrap(), None);
        assert_eq!(s.get_event("ten_a", "evt_1").await.unwrap(), None);
        assert!(s.counters("cred_1").await.unwrap().is_empty());
        let e = err(s
            .delete_credential("ten_a", "cred_1", audit("ten_a", "credential.delete"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        // The secrets are gone: the id again, without secrets, has none.
        s.insert_credential(stripe, vec![], audit("ten_a", "credential.create"))
            .await
            .unwrap();
        let (_, sealed) = s.get_sealed("ten_a", "cred_1").await.unwrap().unwrap();
        assert!(sealed.is_empty());
        // And so is the mapping.
        let mappings = s
            .list_user_mappings("ten_a", "cred_1", first(10))
            .await
            .unwrap();
        assert!(mappings.items.is_empty());
    })
    .await;
}

/// Writers that race for one name, or one version, queue: one wins and the
/// others are told who has the name, or which version is current.
#[tokio::test]
async fn concurrent_writers_of_one_name_or_version() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        let mut racers = JoinSet::new();
        for n in 0..8 {
            let s = s.clone();
            racers.spawn(async move {
                let id = format!("cred_r{n}");
                let name = if n % 2 == 0 { "Race" } else { "RACE" };
                let r = s
                    .insert_credential(
                        credential("ten_a", &id, name, "x"),
                        vec![],
                        audit("ten_a", "credential.create"),
                    )
                    .await;
                (id, r)
            });
        }
        let (mut won, mut lost) = (Vec::new(), Vec::new());
        while let Some(joined) = racers.join_next().await {
            match joined.unwrap() {
                (id, Ok(())) => won.push(id),
                (_, Err(StoreError::NameTaken(holder))) => lost.push(holder),
                (id, Err(e)) => panic!("{id}: {e:?}"),
            }
        }
        assert_eq!(won.len(), 1, "exactly one insert wins");
        assert_eq!(lost, vec![won[0].clone(); 7]);

        let winner = s.get_credential("ten_a", &won[0]).await.unwrap().unwrap();
        let mut racers = JoinSet::new();
        for n in 0..6 {
            let (s, mut record) = (s.clone(), winner.clone());
            record.version = 2;
            record.description = format!("edit {n}");
            racers.spawn(async move {
                let update = CredentialUpdate {
                    record,
                    expected_version: 1,
                    put_secrets: vec![],
                    remove_secrets: vec![],
                };
                s.update_credential(update, audit("ten_a", "credential.update"))
                    .await
            });
        }
        let (mut ok, mut stale) = (0, 0);
        while let Some(joined) = racers.join_next().await {
            match joined.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::VersionMismatch { current: 2 }) => stale += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!((ok, stale), (1, 5));
    })
    .await;
}

/// A create and a rename racing for one name: one gets it, the other is told
/// who has it (not a database error), every round.
#[tokio::test]
async fn a_create_and_a_rename_race_for_one_name() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        let mut winners = std::collections::BTreeSet::new();
        for round in 0..24 {
            let renamed = credential(
                "ten_a",
                &format!("cred_m{round}"),
                &format!("mover {round}"),
                "x",
            );
            s.insert_credential(renamed.clone(), vec![], audit("ten_a", "credential.create"))
                .await
                .unwrap();
            let name = format!("Wanted {round}");
            let mut racers = JoinSet::new();
            let (store, mut record) = (s.clone(), renamed);
            record.name = name.to_uppercase();
            record.version = 2;
            let rename = async move {
                let update = CredentialUpdate {
                    record,
                    expected_version: 1,
                    put_secrets: vec![],
                    remove_secrets: vec![],
                };
                let r = store
                    .update_credential(update, audit("ten_a", "credential.update"))
                    .await;
                (format!("cred_m{round}"), r)
            };
            let store = s.clone();
            let create = async move {
                let id = format!("cred_w{round}");
                let r = store
                    .insert_credential(
                        credential("ten_a", &id, &name, "x"),
                        vec![],
                        audit("ten_a", "credential.create"),
                    )
                    .await;
                (id, r)
            };
            // Each goes first in half the rounds.
            if round % 2 == 0 {
                racers.spawn(rename);
                racers.spawn(create);
            } else {
                racers.spawn(create);
                racers.spawn(rename);
            }
            let (mut won, mut lost) = (Vec::new(), Vec::new());
            while let Some(joined) = racers.join_next().await {
                match joined.unwrap() {
                    (id, Ok(())) => won.push(id),
                    (_, Err(StoreError::NameTaken(holder))) => lost.push(holder),
                    (id, Err(e)) => panic!("round {round}, {id}: {e:?}"),
                }
            }
            assert_eq!(won.len(), 1, "round {round}: one of them gets the name");
            assert_eq!(lost, won, "round {round}: the other is told who has it");
            winners.insert(won[0].starts_with("cred_w"));
        }
        assert_eq!(
            winners.len(),
            2,
            "each wins some round: both ways are tried"
        );
    })
    .await;
}

/// A write that fails after it has changed something is undone whole, and
/// only it: the writes committed beside it (on SQLite, in the same group
/// commit, which then runs again job by job) are all kept, once each.
#[tokio::test]
async fn a_failing_write_is_undone_alone_among_concurrent_ones() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        let audited = audit_count(&s, "ten_a").await;
        s.insert_credential(
            credential("ten_a", "cred_f_taken", "Taken", "x"),
            vec![],
            audit("ten_a", "credential.create"),
        )
        .await
        .unwrap();
        for round in 0..5 {
            let mut writes = JoinSet::new();
            for n in 0..12 {
                let s = s.clone();
                writes.spawn(async move {
                    if n == 6 {
                        // Its first credential goes in before the second clashes.
                        let items = vec![
                            ImportItem::Insert(
                                credential(
                                    "ten_a",
                                    &format!("cred_f_lost{round}"),
                                    &format!("Lost {round}"),
                                    "x",
                                ),
                                vec![secret("api_key", b"lost")],
                            ),
                            ImportItem::Insert(
                                credential("ten_a", &format!("cred_f_clash{round}"), "TAKEN", "x"),
                                vec![],
                            ),
                        ];
                        s.import_credentials(items, audit("ten_a", "credential.import"))
                            .await
                            .map(|()| n)
                    } else {
                        s.insert_credential(
                            credential(
                                "ten_a",
                                &format!("cred_f_{round}_{n}"),
                                &format!("Kept {round} {n}"),
                                "x",
                            ),
                            vec![secret("api_key", format!("kept {n}").as_bytes())],
                            audit("ten_a", "credential.create"),
                        )
                        .await
                        .map(|()| n)
                    }
                });
            }
            let mut kept = Vec::new();
            while let Some(joined) = writes.join_next().await {
                match joined.unwrap() {
                    Ok(n) => kept.push(n),
                    Err(StoreError::NameTaken(holder)) => assert_eq!(holder, "cred_f_taken"),
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
            kept.sort();
            assert_eq!(kept, [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11], "round {round}");
            for n in kept {
                let id = format!("cred_f_{round}_{n}");
                let got = s.get_credential("ten_a", &id).await.unwrap();
                assert_eq!(got.map(|c| c.name), Some(format!("Kept {round} {n}")));
                let (_, sealed) = s.get_sealed("ten_a", &id).await.unwrap().unwrap();
                assert_eq!(
                    secrets(&sealed),
                    [("api_key".to_string(), format!("kept {n}").into_bytes())]
                );
            }
            let lost = format!("cred_f_lost{round}");
            assert!(
                s.get_credential("ten_a", &lost).await.unwrap().is_none(),
                "round {round}"
            );
            assert!(
                s.get_sealed_by_id(&lost).await.unwrap().is_none(),
                "round {round}"
            );
            assert_eq!(
                s.credential_id_by_name("ten_a", &format!("Lost {round}"))
                    .await
                    .unwrap(),
                None
            );
        }
        // One audit entry per kept write (and the first create); none for the import.
        assert_eq!(audit_count(&s, "ten_a").await, audited + 1 + 5 * 11);
        // With more newer rows than a search scans first, these are answered
        // by the name index: it has the kept names and none of the lost ones.
        add_fillers(&s, "ten_a", "cred_fz").await;
        let found = names(&s, "ten_a", "lost", &[], 10).await;
        assert_eq!(found, Vec::<String>::new());
        assert_eq!(
            names(&s, "ten_a", "kept 3 1", &[], 100).await,
            ["Kept 3 11", "Kept 3 10", "Kept 3 1"]
        );
    })
    .await;
}

async fn ids(
    s: &Arc<dyn Store>,
    tenant: &str,
    filter: &CredentialFilter,
    limit: usize,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .list_credentials(
                tenant,
                filter,
                PageRequest {
                    limit,
                    after: after.as_deref(),
                },
            )
            .await
            .unwrap();
        pages.push(page.items.into_iter().map(|c| c.id).collect());
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => return pages,
        }
    }
}

#[tokio::test]
async fn list_filters_and_pages() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        for (id, name, integration, auth, status) in [
            ("cred_1", "Stripe A", "stripe", "api_key", "valid"),
            ("cred_2", "GitHub A", "github", "oauth2", "valid"),
            ("cred_3", "Stripe B", "stripe", "oauth2", "invalid"),
            ("cred_4", "Slack", "slack", "oauth2", "unverified"),
            ("cred_5", "Stripe C", "stripe", "api_key", "valid"),
        ] {
            let mut c = credential("ten_a", id, name, integration);
            c.auth_type = auth.into();
            c.status = status.into();
            s.insert_credential(c, vec![], audit("ten_a", "credential.create"))
                .await
                .unwrap();
        }
        s.insert_credential(
            credential("ten_b", "cred_6", "Stripe Z", "stripe"),
            vec![],
            audit("ten_b", "credential.create"),
        )
        .await
        .unwrap();

        let all = CredentialFilter::default();
        assert_eq!(
            ids(&s, "ten_a", &all, 2).await,
            [
                vec!["cred_5", "cred_4"],
                vec!["cred_3", "cred_2"],
                vec!["cred_1"]
            ]
        );
        // A page that holds the rest has no cursor.
        assert_eq!(
            ids(&s, "ten_a", &all, 5).await,
            [vec!["cred_5", "cred_4", "cred_3", "cred_2", "cred_1"]]
        );
        assert_eq!(ids(&s, "ten_b", &all, 10).await, [vec!["cred_6"]]);
        let by = |integration: Option<&str>, auth: Option<&str>, status: Option<&str>| {
            CredentialFilter {
                integration: integration.map(str::to_string),
                auth_type: auth.map(str::to_string),
                status: status.map(str::to_string),
                ..Default::default()
            }
        };
        assert_eq!(
            ids(&s, "ten_a", &by(Some("stripe"), None, None), 2).await,
            [vec!["cred_5", "cred_3"], vec!["cred_1"]]
        );
        assert_eq!(
            ids(&s, "ten_a", &by(None, Some("oauth2"), None), 10).await,
            [vec!["cred_4", "cred_3", "cred_2"]]
        );
        assert_eq!(
            ids(
                &s,
                "ten_a",
                &by(Some("stripe"), Some("api_key"), Some("valid")),
                10
            )
            .await,
            [vec!["cred_5", "cred_1"]]
        );
        assert_eq!(
            ids(&s, "ten_a", &by(Some("none"), None, None), 10).await,
            [Vec::<String>::new()]
        );

        // A few rows: the window of newest rows answers the search.
        let q = |q: &str, integrations: &[&str]| CredentialFilter {
            q: Some(q.into()),
            q_integrations: integrations.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            ids(&s, "ten_a", &q("STRIPE", &[]), 2).await,
            [vec!["cred_5", "cred_3"], vec!["cred_1"]]
        );
        assert_eq!(
            ids(&s, "ten_a", &q("slac", &["github"]), 10).await,
            [vec!["cred_4", "cred_2"]]
        );
        assert_eq!(
            ids(&s, "ten_a", &q("z", &[]), 10).await,
            [Vec::<String>::new()]
        );
        let mut stripe_valid = q("stripe", &[]);
        stripe_valid.status = Some("valid".into());
        assert_eq!(
            ids(&s, "ten_a", &stripe_valid, 10).await,
            [vec!["cred_5", "cred_1"]]
        );
        // An empty query is no query.
        assert_eq!(ids(&s, "ten_a", &q("", &[]), 10).await[0].len(), 5);
    })
    .await;
}

async fn names(
    s: &Arc<dyn Store>,
    tenant: &str,
    q: &str,
    integrations: &[&str],
    limit: usize,
) -> Vec<String> {
    let filter = CredentialFilter {
        q: Some(q.into()),
        q_integrations: integrations.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .list_credentials(
                tenant,
                &filter,
                PageRequest {
                    limit,
                    after: after.as_deref(),
                },
            )
            .await
            .unwrap();
        out.extend(page.items.into_iter().map(|c| c.name));
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => return out,
        }
    }
}

/// Enough rows (more than the 2,000 a search scans first) that a search must
/// leave the window of newest rows and use the index, or the scan for short
/// queries, to find old matches.
#[tokio::test]
async fn the_name_index_has_the_names_a_write_commits() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        // One write holds a create, a rename of that new credential, and
        // enough newer rows that a search must ask the name index (the
        // newest rows alone do not answer it).
        let old = credential("ten_a", "cred_0000_renamed", "Old Alpha", "stripe");
        let mut renamed = old.clone();
        renamed.name = "New Beta".into();
        renamed.version = 2;
        let mut items = vec![
            ImportItem::Insert(old, vec![]),
            ImportItem::Update(CredentialUpdate {
                record: renamed,
                expected_version: 1,
                put_secrets: vec![],
                remove_secrets: vec![],
            }),
        ];
        for n in 0..SEARCH_WINDOW_ROWS {
            items.push(ImportItem::Insert(
                credential(
                    "ten_a",
                    &format!("cred_1_{n:06}"),
                    &format!("Bulk {n}"),
                    "github",
                ),
                vec![],
            ));
        }
        s.import_credentials(items, audit("ten_a", "credential.import"))
            .await
            .unwrap();
        assert_eq!(names(&s, "ten_a", "beta", &[], 10).await, ["New Beta"]);
        assert_eq!(
            names(&s, "ten_a", "alpha", &[], 10).await,
            Vec::<String>::new()
        );
        assert_eq!(
            names(&s, "ten_a", "bulk 2099", &[], 10).await,
            ["Bulk 2099"]
        );

        // A write that fails stores nothing, in the index either; the next
        // one indexes its own names.
        let clash = vec![
            ImportItem::Insert(
                credential("ten_a", "cred_0000_lost", "Lost Gamma", "stripe"),
                vec![],
            ),
            ImportItem::Insert(
                credential("ten_a", "cred_0000_dup", "New Beta", "stripe"),
                vec![],
            ),
        ];
        err(s
            .import_credentials(clash, audit("ten_a", "credential.import"))
            .await);
        assert_eq!(
            names(&s, "ten_a", "gamma", &[], 10).await,
            Vec::<String>::new()
        );
        s.insert_credential(
            credential("ten_a", "cred_0000_delta", "Kept Delta", "stripe"),
            vec![],
            audit("ten_a", "credential.create"),
        )
        .await
        .unwrap();
        assert_eq!(names(&s, "ten_a", "delta", &[], 10).await, ["Kept Delta"]);
        // Renamed and deleted after their commit: the index follows.
        let mut kept = s
            .get_credential("ten_a", "cred_0000_delta")
            .await
            .unwrap()
            .unwrap();
        kept.name = "Kept Epsilon".into();
        kept.version = 2;
        s.update_credential(
            CredentialUpdate {
                record: kept,
                expected_version: 1,
                put_secrets: vec![],
                remove_secrets: vec![],
            },
            audit("ten_a", "credential.update"),
        )
        .await
        .unwrap();
        assert_eq!(
            names(&s, "ten_a", "delta", &[], 10).await,
            Vec::<String>::new()
        );
        assert_eq!(
            names(&s, "ten_a", "epsilon", &[], 10).await,
            ["Kept Epsilon"]
        );
        s.delete_credential(
            "ten_a",
            "cred_0000_delta",
            audit("ten_a", "credential.delete"),
        )
        .await
        .unwrap();
        assert_eq!(
            names(&s, "ten_a", "epsilon", &[], 10).await,
            Vec::<String>::new()
        );
        assert_eq!(names(&s, "ten_a", "beta", &[], 10).await, ["New Beta"]);
    })
    .await;
}

#[tokio::test]
async fn search_dense_and_sparse() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        let total = 2_500;
        let specials = [
            (3, "Needle Billing", "stripe"),
            (4, "Xy old", "github"),
            (5, "Rare app", "zendesk"),
            (6, "Promo 100%_off", "github"),
            (7, "Promo 100x off", "github"),
            (2_497, "Café Ünïque İstanbul", "github"),
        ];
        let mut writers = JoinSet::new();
        for n in 0..total {
            let (name, integration) = match specials.iter().find(|(k, _, _)| *k == n) {
                Some((_, name, integration)) => (name.to_string(), *integration),
                // A word in 1% of the names.
                None if n % 100 == 0 => (format!("Bulk {n} onepct"), "github"),
                None => (format!("Bulk {n}"), "github"),
            };
            while writers.len() >= 16 {
                writers.join_next().await.unwrap().unwrap();
            }
            let s = s.clone();
            writers.spawn(async move {
                s.insert_credential(
                    credential("ten_a", &format!("cred_{n:026}"), &name, integration),
                    vec![],
                    audit("ten_a", "credential.create"),
                )
                .await
                .unwrap()
            });
        }
        while let Some(w) = writers.join_next().await {
            w.unwrap();
        }
        for (id, name) in [("cred_b", "Needle other"), ("cred_b2", "İzmir Straße")] {
            s.insert_credential(
                credential("ten_b", id, name, "stripe"),
                vec![],
                audit("ten_b", "credential.create"),
            )
            .await
            .unwrap();
        }

        // Sparse matches, older than the window: through the index.
        assert_eq!(
            names(&s, "ten_a", "needle", &[], 50).await,
            ["Needle Billing"]
        );
        assert_eq!(
            names(&s, "ten_a", "EEDLE BILL", &[], 50).await,
            ["Needle Billing"]
        );
        assert_eq!(
            names(&s, "ten_b", "needle", &[], 50).await,
            ["Needle other"]
        );
        // Through the index with no match, and with matches of another
        // tenant's names only.
        assert_eq!(
            names(&s, "ten_a", "nowhere", &[], 50).await,
            Vec::<String>::new()
        );
        assert_eq!(
            names(&s, "ten_a", "zmir str", &[], 50).await,
            Vec::<String>::new()
        );
        // Short queries scan.
        assert_eq!(names(&s, "ten_a", "xy", &[], 50).await, ["Xy old"]);
        // Letters beyond ASCII fold too: through the index (one match in
        // the newest 2,000 rows does not promise a page), and in the scan
        // of a short list; the query folds as the names do (`İ`, whose
        // lowercase differs between Rust and the C library).
        assert_eq!(
            names(&s, "ten_a", "fÉ ÜNÏ", &[], 50).await,
            ["Café Ünïque İstanbul"]
        );
        assert_eq!(
            names(&s, "ten_a", "İSTANBUL", &[], 50).await,
            ["Café Ünïque İstanbul"]
        );
        assert_eq!(
            names(&s, "ten_b", "İZMIR STRA", &[], 50).await,
            ["İzmir Straße"]
        );
        // No name holds a NUL: such a query matches by integration only.
        assert_eq!(
            names(&s, "ten_a", "ünïque\0", &[], 50).await,
            Vec::<String>::new()
        );
        assert_eq!(
            names(&s, "ten_a", "\0", &["zendesk"], 50).await,
            ["Rare app"]
        );
        // The app's name matches through its integration id.
        assert_eq!(
            names(&s, "ten_a", "zen", &["zendesk"], 50).await,
            ["Rare app"]
        );
        // LIKE's wildcards are plain characters in a query.
        assert_eq!(names(&s, "ten_a", "0%_", &[], 50).await, ["Promo 100%_off"]);
        assert_eq!(
            names(&s, "ten_a", "0%_OFF", &[], 50).await,
            ["Promo 100%_off"]
        );
        assert_eq!(names(&s, "ten_a", "%", &[], 50).await, ["Promo 100%_off"]);
        assert_eq!(names(&s, "ten_a", "_", &[], 50).await, ["Promo 100%_off"]);
        assert_eq!(
            names(&s, "ten_a", "100_o", &[], 50).await,
            Vec::<String>::new()
        );
        // Sparse matches page too, newest first.
        assert_eq!(
            names(&s, "ten_a", "promo", &[], 1).await,
            ["Promo 100x off", "Promo 100%_off"]
        );
        // Exact filters hold on the index path.
        let filter = CredentialFilter {
            q: Some("needle".into()),
            integration: Some("github".into()),
            ..Default::default()
        };
        let page = s
            .list_credentials("ten_a", &filter, first(10))
            .await
            .unwrap();
        assert!(page.items.is_empty() && page.next_cursor.is_none());
        // A word in 1% of the names: too few matches for a page in the
        // newest 2,000 rows. The search scans on, as 20 matches in 2,000
        // rows promise the rest of a page within reach: a page filled before
        // the list ends (22), and the list ending before a page is full (40).
        let expected: Vec<String> = (0..total)
            .rev()
            .filter(|n| n % 100 == 0)
            .map(|n| format!("Bulk {n} onepct"))
            .collect();
        for limit in [22, 40] {
            let onepct = names(&s, "ten_a", "ONEPCT", &[], limit).await;
            assert_eq!(onepct, expected, "pages of {limit}");
        }
        // Dense matches: the window answers, and paging still sees each row once.
        let bulk = names(&s, "ten_a", "bulk", &[], 200).await;
        assert_eq!(bulk.len(), total - specials.len());
        let unique: std::collections::BTreeSet<_> = bulk.iter().collect();
        assert_eq!(unique.len(), bulk.len());
        assert_eq!(bulk[0], format!("Bulk {}", total - 1), "newest first");
    })
    .await;
}

#[tokio::test]
async fn services_in_use() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        let billing = service("ten_a", "svc_1", "Billing Hooks");
        s.create_service(billing.clone(), audit("ten_a", "service.create"))
            .await
            .unwrap();
        let e = err(s
            .create_service(
                service("ten_a", "svc_2", "billing HOOKS"),
                audit("ten_a", "service.create"),
            )
            .await);
        assert!(
            matches!(&e, StoreError::NameTaken(id) if id == "svc_1"),
            "{e:?}"
        );
        s.create_service(
            service("ten_a", "svc_3", "Alerts"),
            audit("ten_a", "service.create"),
        )
        .await
        .unwrap();
        s.create_service(
            service("ten_b", "svc_4", "Billing Hooks"),
            audit("ten_b", "service.create"),
        )
        .await
        .unwrap();
        assert_eq!(
            s.get_service("ten_a", "svc_1").await.unwrap(),
            Some(billing.clone())
        );
        assert_eq!(s.get_service("ten_b", "svc_1").await.unwrap(), None);
        let listed: Vec<_> = s
            .list_services("ten_a")
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(listed, ["svc_3", "svc_1"]);

        for (id, name) in [("cred_2", "Second user"), ("cred_1", "First user")] {
            let mut c = credential("ten_a", id, name, "stripe");
            c.services = BTreeMap::from([("webhooks".to_string(), "svc_1".to_string())]);
            s.insert_credential(c, vec![], audit("ten_a", "credential.create"))
                .await
                .unwrap();
        }
        let users = vec![
            ("cred_1".to_string(), "First user".to_string()),
            ("cred_2".to_string(), "Second user".to_string()),
        ];

        let mut next = billing.clone();
        next.version = 2;
        next.description = "changed".into();
        next.spec = json!({ "path": "/v2" });
        next.integrations = vec!["stripe".into(), "github".into()];
        next.role = "action".into();
        next.updated_at = t(20);
        let e = err(s
            .update_service(next.clone(), 5, false, audit("ten_a", "service.update"))
            .await);
        assert!(
            matches!(e, StoreError::VersionMismatch { current: 1 }),
            "{e:?}"
        );
        let e = err(s
            .update_service(next.clone(), 1, false, audit("ten_a", "service.update"))
            .await);
        assert!(matches!(&e, StoreError::InUse(u) if *u == users), "{e:?}");
        let mut clash = next.clone();
        clash.name = "ALERTS".into();
        let e = err(s
            .update_service(clash, 1, true, audit("ten_a", "service.update"))
            .await);
        assert!(
            matches!(&e, StoreError::NameTaken(id) if id == "svc_3"),
            "{e:?}"
        );
        let mut missing = next.clone();
        missing.id = "svc_404".into();
        let e = err(s
            .update_service(missing, 1, true, audit("ten_a", "service.update"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        s.update_service(next.clone(), 1, true, audit("ten_a", "service.update"))
            .await
            .unwrap();
        // An update keeps the role.
        let mut expected = next.clone();
        expected.role = billing.role.clone();
        assert_eq!(
            s.get_service("ten_a", "svc_1").await.unwrap(),
            Some(expected)
        );

        let e = err(s
            .delete_service("ten_a", "svc_1", audit("ten_a", "service.delete"))
            .await);
        assert!(matches!(&e, StoreError::InUse(u) if *u == users), "{e:?}");
        let e = err(s
            .delete_service("ten_b", "svc_1", audit("ten_b", "service.delete"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        for id in ["cred_1", "cred_2"] {
            s.delete_credential("ten_a", id, audit("ten_a", "credential.delete"))
                .await
                .unwrap();
        }
        s.delete_service("ten_a", "svc_1", audit("ten_a", "service.delete"))
            .await
            .unwrap();
        assert_eq!(s.get_service("ten_a", "svc_1").await.unwrap(), None);
        let e = err(s
            .delete_service("ten_a", "svc_1", audit("ten_a", "service.delete"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
    })
    .await;
}

#[tokio::test]
async fn an_event_is_stored_only_at_the_credential_version_it_was_checked_against() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        s.insert_credential(
            credential("ten_a", "cred_1", "Stripe", "stripe"),
            vec![secret("webhook_secret", b"sealed-w")],
            audit("ten_a", "credential.create"),
        )
        .await
        .unwrap();
        s.put_user_mapping(
            "ten_a",
            "cred_1",
            UserMapping {
                app_user_id: "U1".into(),
                user_id: "user_1".into(),
                created_at: t(10),
            },
            audit("ten_a", "mapping.put"),
        )
        .await
        .unwrap();
        let new = |id: &str,
                   credential: &str,
                   version: Option<i64>,
                   app_user: Option<&str>,
                   user: Option<&str>,
                   map_user: bool| NewEvent {
            event: EventRecord {
                app_user_id: app_user.map(str::to_string),
                user_id: user.map(str::to_string),
                ..event("ten_a", id, credential, "webhook", Some(id))
            },
            credential_version: version,
            map_user,
        };
        let stored = |user: Option<&str>| EventStored::Stored {
            user_id: user.map(str::to_string),
        };
        // At the credential's version, the user looked up as it is written.
        let cases = [
            (
                new("evt_1", "cred_1", Some(1), Some("U1"), None, true),
                stored(Some("user_1")),
            ),
            (
                new("evt_2", "cred_1", Some(1), Some("U2"), None, true),
                stored(None),
            ),
            (
                new("evt_3", "cred_1", Some(1), Some("U1"), None, false),
                stored(None),
            ),
            (
                new("evt_4", "cred_1", Some(1), Some("U1"), Some("user_7"), true),
                stored(Some("user_7")),
            ),
            (
                new("evt_5", "cred_1", None, Some("U1"), None, true),
                stored(Some("user_1")),
            ),
            // Another version, or a credential that is not there: not stored.
            (
                new("evt_6", "cred_1", Some(2), Some("U1"), None, true),
                EventStored::CredentialChanged,
            ),
            (
                new("evt_7", "cred_404", Some(1), None, None, false),
                EventStored::CredentialChanged,
            ),
        ];
        for (n, want) in cases.clone() {
            let id = n.event.id.clone();
            assert_eq!(s.store_event(n).await.unwrap(), want, "{id}");
        }
        let event_1 = s.get_event("ten_a", "evt_1").await.unwrap().unwrap();
        assert_eq!(event_1.user_id.as_deref(), Some("user_1"));
        assert_eq!(event_1.app_user_id.as_deref(), Some("U1"));
        for id in ["evt_6", "evt_7"] {
            assert_eq!(s.get_event("ten_a", id).await.unwrap(), None, "{id}");
        }
        // The same deliveries again, all at once (one group commit on
        // PostgreSQL): the stored ones are duplicates, the others still
        // refused for their version.
        let mut set = JoinSet::new();
        for (mut n, want) in cases {
            n.event.id = format!("{}_again", n.event.id);
            let want = match want {
                EventStored::Stored { .. } => EventStored::Duplicate,
                other => other,
            };
            let s = s.clone();
            set.spawn(async move { (s.store_event(n).await.unwrap(), want) });
        }
        while let Some(r) = set.join_next().await {
            let (got, want) = r.unwrap();
            assert_eq!(got, want);
        }
    })
    .await;
}

/// PostgreSQL's ingress writers share one connection (their statements
/// pipelined on it). When it dies, a delivery that was answered is stored
/// (once: retried elsewhere, a batch that did commit is a duplicate), and
/// the next deliveries take a new connection: all are stored.
#[tokio::test]
async fn postgres_ingress_outlives_its_connection() {
    let Some(schema) = postgres_or_skip().await else {
        return;
    };
    let name = schema.name.clone();
    // Its own application name, so that only this store's connections are
    // ended (other tests share the server). The test URL is a URL here.
    let base = postgres_url();
    let url = format!(
        "{base}{}application_name={name}",
        if base.contains('?') { "&" } else { "?" }
    );
    schema
        .run(async move {
            let s: Arc<dyn Store> =
                Arc::new(PostgresStore::connect_in_schema(&url, &name).await.unwrap());
            two_tenants(&s).await;
            let stored = EventStored::Stored {
                user_id: Some("user_1".into()),
            };
            let new = |n: usize| NewEvent {
                event: event(
                    "ten_a",
                    &format!("evt_{n:04}"),
                    "cred_1",
                    "webhook",
                    Some(&format!("d_{n}")),
                ),
                credential_version: None,
                map_user: false,
            };
            let burst = |ns: std::ops::Range<usize>| {
                let mut set = JoinSet::new();
                for n in ns {
                    let (s, e) = (s.clone(), new(n));
                    set.spawn(async move { (n, s.store_event(e).await) });
                }
                set
            };
            // The writers' connection exists once an event went through it.
            assert_eq!(s.store_event(new(0)).await.unwrap(), stored);

            let (admin, connection) =
                tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let ended = admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE application_name = $1",
                    &[&name],
                )
                .await
                .unwrap();
            assert!(!ended.is_empty(), "the store had connections to end");

            let mut answered = vec!["evt_0000".to_string()];
            let mut first = burst(1..201);
            while let Some(r) = first.join_next().await {
                // A delivery may fail here (the provider sends it again);
                // one that was answered is stored.
                if let (n, Ok(outcome)) = r.unwrap() {
                    assert!(
                        outcome == stored || outcome == EventStored::Duplicate,
                        "{n}: {outcome:?}"
                    );
                    answered.push(format!("evt_{n:04}"));
                }
            }
            let mut second = burst(201..401);
            while let Some(r) = second.join_next().await {
                let (n, outcome) = r.unwrap();
                assert_eq!(outcome.unwrap(), stored, "{n}");
                answered.push(format!("evt_{n:04}"));
            }
            // The second burst, the first event and some of the first burst.
            assert!(answered.len() > 201, "{} answered", answered.len());
            for id in answered {
                assert!(s.get_event("ten_a", &id).await.unwrap().is_some(), "{id}");
            }
            // In groups again (rows of one transaction share its xmin), not
            // one by one as a batch that failed on a dead connection is.
            let commits: i64 = admin
                .query_one(
                    &format!(
                        "SELECT count(DISTINCT xmin::text) FROM {name}.events WHERE id > 'evt_0200'"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert!(commits < 100, "200 deliveries in {commits} commits");
        })
        .await;
}

/// PostgreSQL's migration 6 drops the events' row number and makes
/// (tenant, id) their primary key: events stored before it are all still
/// there after it, in order, each only in its tenant, and a delivery stored
/// before it is still a duplicate after it.
#[tokio::test]
async fn events_stored_before_postgres_migration_6_survive_it() {
    let Some(schema) = postgres_or_skip().await else {
        return;
    };
    let name = schema.name.clone();
    let store = PostgresStore::open_unmigrated(&postgres_url(), Some(&name)).unwrap();
    schema
        .run(async move {
            assert_eq!(store.migrate_to(5).await.unwrap(), vec![1, 2, 3, 4, 5]);
            let store = Arc::new(store);
            let s: Arc<dyn Store> = store.clone();
            two_tenants(&s).await;
            let before = [
                event("ten_a", "evt_01", "cred_1", "webhook", Some("d1")),
                event("ten_a", "evt_02", "cred_1", "webhook", None),
                event("ten_b", "evt_03", "cred_2", "webhook", Some("d1")),
            ];
            for e in &before {
                assert!(s.insert_event(e.clone()).await.unwrap(), "{}", e.id);
            }

            assert_eq!(store.migrate_to(6).await.unwrap(), vec![6]);
            // The table as the migration leaves it: no row number, three indexes.
            let catalog = Schema::new().await.unwrap().admin;
            let seq = catalog
                .query(
                    "SELECT 1 FROM information_schema.columns
                 WHERE table_schema = $1 AND table_name = 'events' AND column_name = 'seq'",
                    &[&name],
                )
                .await
                .unwrap();
            assert!(seq.is_empty(), "events.seq is gone");
            let indexes: Vec<(String, String)> = catalog
                .query(
                    "SELECT indexname::text, indexdef FROM pg_indexes
                 WHERE schemaname = $1 AND tablename = 'events' ORDER BY 1",
                    &[&name],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                ["events_credential", "events_delivery", "events_pkey"]
            );
            assert!(
                indexes[2].1.ends_with("(tenant_id, id)"),
                "{}",
                indexes[2].1
            );
            let listed = |tenant: &'static str| {
                let s = s.clone();
                async move {
                    let page = s
                        .list_events(tenant, &EventFilter::default(), first(10))
                        .await
                        .unwrap();
                    page.items.into_iter().map(|e| e.id).collect::<Vec<_>>()
                }
            };
            assert_eq!(listed("ten_a").await, ["evt_02", "evt_01"]);
            assert_eq!(listed("ten_b").await, ["evt_03"]);
            assert_eq!(
                s.get_event("ten_a", "evt_01").await.unwrap(),
                Some(before[0].clone())
            );
            assert_eq!(s.get_event("ten_b", "evt_01").await.unwrap(), None);
            // Delivery d1 of cred_1 again: a duplicate, stored before the
            // migration; a new delivery is stored next to the old ones.
            assert!(!s
                .insert_event(event("ten_a", "evt_04", "cred_1", "webhook", Some("d1")))
                .await
                .unwrap());
            assert!(s
                .insert_event(event("ten_a", "evt_05", "cred_1", "webhook", Some("d2")))
                .await
                .unwrap());
            assert_eq!(listed("ten_a").await, ["evt_05", "evt_02", "evt_01"]);
        })
        .await;
}

#[tokio::test]
async fn events_are_stored_once_per_delivery() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        let e1 = event("ten_a", "evt_1", "cred_1", "webhook", Some("d1"));
        assert!(s.insert_event(e1.clone()).await.unwrap());
        // The same delivery again, for the same credential and kind: not stored.
        assert!(!s
            .insert_event(event("ten_a", "evt_2", "cred_1", "webhook", Some("d1")))
            .await
            .unwrap());
        // Another kind, another credential, or no delivery id: stored.
        let mut e3 = event("ten_a", "evt_3", "cred_1", "action", Some("d1"));
        e3.event_type = "button.click".into();
        e3.user_id = None;
        e3.valid_request = false;
        assert!(s.insert_event(e3.clone()).await.unwrap());
        assert!(s
            .insert_event(event("ten_a", "evt_4", "cred_2", "webhook", Some("d1")))
            .await
            .unwrap());
        assert!(s
            .insert_event(event("ten_a", "evt_5", "cred_1", "webhook", None))
            .await
            .unwrap());
        assert!(s
            .insert_event(event("ten_a", "evt_6", "cred_1", "webhook", None))
            .await
            .unwrap());
        assert!(s
            .insert_event(event("ten_b", "evt_7", "cred_9", "webhook", Some("d1")))
            .await
            .unwrap());

        assert_eq!(s.get_event("ten_a", "evt_1").await.unwrap(), Some(e1));
        assert_eq!(s.get_event("ten_a", "evt_3").await.unwrap(), Some(e3));
        assert_eq!(s.get_event("ten_a", "evt_2").await.unwrap(), None);
        assert_eq!(s.get_event("ten_b", "evt_1").await.unwrap(), None);

        let list = |f: EventFilter, limit| {
            let s = s.clone();
            async move {
                let mut pages = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let p = s
                        .list_events(
                            "ten_a",
                            &f,
                            PageRequest {
                                limit,
                                after: after.as_deref(),
                            },
                        )
                        .await
                        .unwrap();
                    pages.push(p.items.into_iter().map(|e| e.id).collect::<Vec<_>>());
                    match p.next_cursor {
                        Some(c) => after = Some(c),
                        None => return pages,
                    }
                }
            }
        };
        assert_eq!(
            list(EventFilter::default(), 2).await,
            [
                vec!["evt_6", "evt_5"],
                vec!["evt_4", "evt_3"],
                vec!["evt_1"]
            ]
        );
        let f = |credential: Option<&str>,
                 kind: Option<&str>,
                 event_type: Option<&str>,
                 user: Option<&str>| EventFilter {
            credential_id: credential.map(str::to_string),
            kind: kind.map(str::to_string),
            event_type: event_type.map(str::to_string),
            user_id: user.map(str::to_string),
        };
        assert_eq!(
            list(f(Some("cred_2"), None, None, None), 10).await,
            [vec!["evt_4"]]
        );
        assert_eq!(
            list(f(None, Some("action"), None, None), 10).await,
            [vec!["evt_3"]]
        );
        assert_eq!(
            list(f(None, None, Some("button.click"), None), 10).await,
            [vec!["evt_3"]]
        );
        assert_eq!(
            list(f(Some("cred_1"), Some("webhook"), None, Some("user_1")), 10).await,
            [vec!["evt_6", "evt_5", "evt_1"]]
        );
        let b = s
            .list_events("ten_b", &EventFilter::default(), first(10))
            .await
            .unwrap();
        assert_eq!(b.items.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn user_mappings() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        s.insert_credential(
            credential("ten_a", "cred_1", "Slack", "slack"),
            vec![],
            audit("ten_a", "credential.create"),
        )
        .await
        .unwrap();
        let mapping = |app: &str, user: &str, at| UserMapping {
            app_user_id: app.into(),
            user_id: user.into(),
            created_at: t(at),
        };
        let audits = audit_count(&s, "ten_b").await;
        let e = err(s
            .put_user_mapping(
                "ten_b",
                "cred_1",
                mapping("U1", "user_1", 1),
                audit("ten_b", "mapping.put"),
            )
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        assert_eq!(audit_count(&s, "ten_b").await, audits);
        for (app, user) in [("U3", "user_3"), ("U1", "user_1"), ("U2", "user_2")] {
            s.put_user_mapping(
                "ten_a",
                "cred_1",
                mapping(app, user, 1),
                audit("ten_a", "mapping.put"),
            )
            .await
            .unwrap();
        }
        // Mapping an app user again replaces the user, not the creation time.
        s.put_user_mapping(
            "ten_a",
            "cred_1",
            mapping("U1", "user_9", 50),
            audit("ten_a", "mapping.put"),
        )
        .await
        .unwrap();
        assert_eq!(
            s.find_user_mapping("cred_1", "U1")
                .await
                .unwrap()
                .as_deref(),
            Some("user_9")
        );
        assert_eq!(s.find_user_mapping("cred_1", "U4").await.unwrap(), None);

        // Ascending app user ids; the cursor is the last one.
        let p = s
            .list_user_mappings("ten_a", "cred_1", first(2))
            .await
            .unwrap();
        assert_eq!(
            p.items,
            [mapping("U1", "user_9", 1), mapping("U2", "user_2", 1)]
        );
        assert_eq!(p.next_cursor.as_deref(), Some("U2"));
        let p = s
            .list_user_mappings(
                "ten_a",
                "cred_1",
                PageRequest {
                    limit: 2,
                    after: Some("U2"),
                },
            )
            .await
            .unwrap();
        assert_eq!(p.items, [mapping("U3", "user_3", 1)]);
        assert_eq!(p.next_cursor, None);
        let e = err(s.list_user_mappings("ten_b", "cred_1", first(2)).await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        let e = err(s.list_user_mappings("ten_a", "cred_404", first(2)).await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");

        s.delete_user_mapping("ten_a", "cred_1", "U2", audit("ten_a", "mapping.delete"))
            .await
            .unwrap();
        let e = err(s
            .delete_user_mapping("ten_a", "cred_1", "U2", audit("ten_a", "mapping.delete"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        let e = err(s
            .delete_user_mapping("ten_b", "cred_1", "U1", audit("ten_b", "mapping.delete"))
            .await);
        assert!(matches!(e, StoreError::NotFound), "{e:?}");
        assert_eq!(s.find_user_mapping("cred_1", "U2").await.unwrap(), None);
        assert_eq!(
            s.find_user_mapping("cred_1", "U1")
                .await
                .unwrap()
                .as_deref(),
            Some("user_9")
        );
    })
    .await;
}

#[tokio::test]
async fn counters_add_up() {
    each_backend(|s| async move {
        let d = |credential: &str, kind: &str, outcome: &str, count| CounterDelta {
            credential_id: credential.into(),
            kind: kind.into(),
            outcome: outcome.into(),
            count,
        };
        s.add_counters(vec![]).await.unwrap();
        s.add_counters(vec![
            d("cred_1", "webhook", "accepted", 2),
            d("cred_1", "webhook", "accepted", 3),
            d("cred_1", "webhook", "duplicate", 1),
            d("cred_2", "action", "accepted", 1),
        ])
        .await
        .unwrap();
        s.add_counters(vec![
            d("cred_1", "webhook", "accepted", 5),
            d("cred_1", "action", "rejected:bad_signature", 1),
        ])
        .await
        .unwrap();
        assert_eq!(
            s.counters("cred_1").await.unwrap(),
            [
                d("cred_1", "action", "rejected:bad_signature", 1),
                d("cred_1", "webhook", "accepted", 10),
                d("cred_1", "webhook", "duplicate", 1),
            ]
        );
        assert_eq!(
            s.counters("cred_2").await.unwrap(),
            [d("cred_2", "action", "accepted", 1)]
        );
        assert!(s.counters("cred_3").await.unwrap().is_empty());

        // Read with the credential: the same counters (none for a
        // credential never counted), and nothing without it.
        two_tenants(&s).await;
        for (id, name) in [("cred_1", "Counted"), ("cred_5", "Never counted")] {
            s.insert_credential(
                credential("ten_a", id, name, "stripe"),
                vec![],
                audit("ten_a", "credential.create"),
            )
            .await
            .unwrap();
        }
        for (id, expected) in [("cred_1", 3), ("cred_5", 0)] {
            let (rec, counted) = s
                .get_credential_with_counters("ten_a", id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(Some(rec), s.get_credential("ten_a", id).await.unwrap());
            assert_eq!(counted, s.counters(id).await.unwrap());
            assert_eq!(counted.len(), expected, "{id}");
        }
        assert!(s
            .get_credential_with_counters("ten_b", "cred_1")
            .await
            .unwrap()
            .is_none());
        assert!(s
            .get_credential_with_counters("ten_a", "cred_404")
            .await
            .unwrap()
            .is_none());
    })
    .await;
}

/// A bearer's read of one credential finds what `find_token` and then
/// `get_credential_with_counters` would: the token and its tenant, and the
/// credential only in that tenant; nothing for an unknown or revoked token.
#[tokio::test]
async fn a_token_is_found_with_its_tenants_credential() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        for (tenant, id) in [
            ("ten_a", "cred_1"),
            ("ten_a", "cred_2"),
            ("ten_b", "cred_3"),
        ] {
            let mut rec = credential(tenant, id, id, "stripe");
            if id == "cred_2" {
                // Every nullable column set, so each is read from its place.
                rec.status = "invalid".into();
                rec.status_message = Some("the provider said no".into());
                rec.checked_at = Some(t(4));
            }
            s.insert_credential(rec, vec![], audit(tenant, "credential.create"))
                .await
                .unwrap();
        }
        let delta = |credential: &str, kind: &str, outcome: &str, count| CounterDelta {
            credential_id: credential.into(),
            kind: kind.into(),
            outcome: outcome.into(),
            count,
        };
        // Two counters for cred_1, none for cred_2, one for cred_3, and one
        // for an id no credential has (counters need none).
        s.add_counters(vec![
            delta("cred_1", "webhook", "accepted", 7),
            delta("cred_1", "action", "duplicate", 2),
            delta("cred_3", "webhook", "rejected", 5),
            delta("cred_404", "webhook", "accepted", 1),
        ])
        .await
        .unwrap();

        for id in ["cred_1", "cred_2"] {
            let found = s
                .find_token_with_credential(hash(1), id)
                .await
                .unwrap()
                .expect("a live token");
            assert_eq!(found.token, token("tok_a1", "ten_a", 1));
            assert_eq!(found.tenant, tenant("ten_a", "Acme"));
            let (rec, counted) = found.credential.expect("its tenant's credential");
            let (alone, alone_counted) = s
                .get_credential_with_counters("ten_a", id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(rec, alone, "{id}");
            assert_eq!(counted, alone_counted, "{id}");
            if id == "cred_2" {
                assert_eq!(rec.status_message.as_deref(), Some("the provider said no"));
                assert_eq!(rec.checked_at, Some(t(4)));
                assert!(counted.is_empty());
            }
        }
        let found = s
            .find_token_with_credential(hash(1), "cred_1")
            .await
            .unwrap()
            .unwrap();
        let counted: Vec<_> = found
            .credential
            .unwrap()
            .1
            .into_iter()
            .map(|d| (d.credential_id, d.kind, d.outcome, d.count))
            .collect();
        let expected = |kind: &str, outcome: &str, count: u64| {
            (
                "cred_1".to_string(),
                kind.to_string(),
                outcome.to_string(),
                count,
            )
        };
        assert_eq!(
            counted,
            [
                expected("action", "duplicate", 2),
                expected("webhook", "accepted", 7)
            ]
        );

        // Another tenant's credential, or none: the token, without one.
        for id in ["cred_3", "cred_404"] {
            let found = s
                .find_token_with_credential(hash(1), id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(found.token.id, "tok_a1");
            assert!(found.credential.is_none(), "{id}");
        }
        let found = s
            .find_token_with_credential(hash(2), "cred_3")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.tenant, tenant("ten_b", "Beta"));
        let (rec, counted) = found.credential.unwrap();
        assert_eq!(rec.id, "cred_3");
        assert_eq!(
            counted
                .into_iter()
                .map(|d| (d.credential_id, d.kind, d.outcome, d.count))
                .collect::<Vec<_>>(),
            [(
                "cred_3".to_string(),
                "webhook".to_string(),
                "rejected".to_string(),
                5
            )]
        );

        // An unknown token finds nothing, not even a credential it names.
        assert!(s
            .find_token_with_credential(hash(9), "cred_1")
            .await
            .unwrap()
            .is_none());
        s.revoke_token("ten_a", "tok_a1", t(10), audit("ten_a", "token.revoke"))
            .await
            .unwrap();
        assert!(s
            .find_token_with_credential(hash(1), "cred_1")
            .await
            .unwrap()
            .is_none());
    })
    .await;
}

#[tokio::test]
async fn sessions_expire_and_die_with_their_token() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        s.create_token(token("tok_a2", "ten_a", 4), audit("ten_a", "token.create"))
            .await
            .unwrap();
        let session = |n: u8, token: &str, from: i64, to: i64| SessionRecord {
            id_hash: hash(100 + n),
            token_id: token.into(),
            csrf: format!("csrf-{n}"),
            created_at: t(from),
            expires_at: t(to),
        };
        s.create_session(session(1, "tok_a1", 100, 200))
            .await
            .unwrap();
        let (found, tok, ten) = s.find_session(hash(101), t(150)).await.unwrap().unwrap();
        assert_eq!(found, session(1, "tok_a1", 100, 200));
        assert_eq!(tok, token("tok_a1", "ten_a", 1));
        assert_eq!(ten, tenant("ten_a", "Acme"));
        // Expired at its expiry time.
        assert!(s.find_session(hash(101), t(200)).await.unwrap().is_none());
        assert!(s.find_session(hash(199), t(150)).await.unwrap().is_none());
        // A new session clears the expired ones.
        s.create_session(session(2, "tok_a2", 300, 400))
            .await
            .unwrap();
        assert!(s.find_session(hash(101), t(150)).await.unwrap().is_none());
        assert!(s.find_session(hash(102), t(350)).await.unwrap().is_some());
        // A session dies with its token.
        s.revoke_token("ten_a", "tok_a2", t(360), audit("ten_a", "token.revoke"))
            .await
            .unwrap();
        assert!(s.find_session(hash(102), t(370)).await.unwrap().is_none());
        // Signing out.
        s.create_session(session(3, "tok_a1", 300, 400))
            .await
            .unwrap();
        assert!(s.find_session(hash(103), t(350)).await.unwrap().is_some());
        s.delete_session(hash(103)).await.unwrap();
        assert!(s.find_session(hash(103), t(350)).await.unwrap().is_none());
        s.delete_session(hash(103)).await.unwrap();
        // Only for a token that exists.
        assert!(s
            .create_session(session(4, "tok_404", 300, 400))
            .await
            .is_err());
    })
    .await;
}

#[tokio::test]
async fn audit_pages() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        let entry = |tenant: &str, n: usize| {
            let mut a = audit(tenant, "credential.export");
            a.id = format!("aud_p{n:02}");
            a.source = (n > 4).then(|| "10.0.0.1".to_string());
            a.details =
                json!({ "n": n, "fields": ["api_key"], "nested": { "x": [1, 2.5, "three"] } });
            a
        };
        for n in 1..=7 {
            s.record_audit(entry("ten_a", n)).await.unwrap();
        }
        for n in 8..=9 {
            s.record_audit(entry("ten_b", n)).await.unwrap();
        }
        let mut pages = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = s
                .list_audit(
                    "ten_a",
                    PageRequest {
                        limit: 3,
                        after: after.as_deref(),
                    },
                )
                .await
                .unwrap();
            pages.push(p.items);
            match p.next_cursor {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        let ids: Vec<Vec<&str>> = pages
            .iter()
            .map(|p| p.iter().map(|a| a.id.as_str()).collect())
            .collect();
        assert_eq!(
            ids,
            [
                vec!["aud_p07", "aud_p06", "aud_p05"],
                vec!["aud_p04", "aud_p03", "aud_p02"],
                vec!["aud_p01"]
            ]
        );
        assert_eq!(pages[0][0], entry("ten_a", 7));
        assert_eq!(pages[0][1], entry("ten_a", 6));
        let b = s.list_audit("ten_b", first(10)).await.unwrap();
        assert_eq!(b.items, [entry("ten_b", 9), entry("ten_b", 8)]);
        assert!(
            s.record_audit(entry("ten_a", 7)).await.is_err(),
            "audit ids are unique"
        );
    })
    .await;
}

/// PostgreSQL only: migrations apply once, whoever starts first.
#[tokio::test]
async fn postgres_replicas_migrate_once() {
    let Some(schema) = postgres_or_skip().await else {
        return;
    };
    let name = schema.name.clone();
    schema
        .run(async move {
            let url = postgres_url();
            let idle = PostgresStore::open_unmigrated(&url, Some(&name)).unwrap();
            assert_eq!(
                idle.migration_status().await.unwrap(),
                [
                    (1, false),
                    (2, false),
                    (3, false),
                    (4, false),
                    (5, false),
                    (6, false)
                ]
            );
            let mut replicas = JoinSet::new();
            for _ in 0..3 {
                let (url, name) = (url.clone(), name.clone());
                replicas.spawn(async move {
                    PostgresStore::connect_in_schema(&url, &name)
                        .await
                        .map(|_| ())
                });
            }
            while let Some(r) = replicas.join_next().await {
                r.unwrap().unwrap();
            }
            assert_eq!(
                idle.migration_status().await.unwrap(),
                [
                    (1, true),
                    (2, true),
                    (3, true),
                    (4, true),
                    (5, true),
                    (6, true)
                ]
            );
            assert!(idle.migrate().await.unwrap().is_empty());
            let e = PostgresStore::connect_in_schema(&url, "Bad-Name")
                .await
                .err();
            assert!(matches!(e, Some(StoreError::Backend(_))), "{e:?}");
        })
        .await;
}

#[tokio::test]
async fn concurrent_deliveries_are_stored_once_each() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        // 120 deliveries, each sent three times at once, arrive together: the
        // group commit stores each once and tells exactly one sender "new".
        let mut tasks = JoinSet::new();
        for copy in 0..3 {
            for d in 0..120 {
                let s = s.clone();
                tasks.spawn(async move {
                    let id = format!("evt_{d:03}_{copy}");
                    let delivery = format!("d{d}");
                    let e = event("ten_a", &id, "cred_1", "webhook", Some(&delivery));
                    (d, s.insert_event(e).await.unwrap())
                });
            }
        }
        // An event that PostgreSQL refuses (NUL in jsonb) in the same burst
        // must not take the others down with it.
        let bad = {
            let s = s.clone();
            let mut e = event("ten_a", "evt_bad", "cred_1", "webhook", Some("bad"));
            e.payload = json!({ "text": "nul \u{0} inside" });
            tokio::spawn(async move { s.insert_event(e).await })
        };
        let mut new_per_delivery = BTreeMap::new();
        while let Some(r) = tasks.join_next().await {
            let (d, stored) = r.unwrap();
            *new_per_delivery.entry(d).or_insert(0) += usize::from(stored);
        }
        let _ = bad.await.unwrap();
        assert_eq!(new_per_delivery.len(), 120);
        assert!(
            new_per_delivery.values().all(|n| *n == 1),
            "{new_per_delivery:?}"
        );
        let f = EventFilter {
            credential_id: Some("cred_1".into()),
            ..Default::default()
        };
        let stored = s.list_events("ten_a", &f, first(1000)).await.unwrap().items;
        let good: Vec<_> = stored.iter().filter(|e| e.id != "evt_bad").collect();
        assert_eq!(good.len(), 120);
    })
    .await;
}

/// Every row of a store, as a copy sees it.
async fn snapshot_rows(s: &dyn Store) -> Vec<(usize, Vec<snapshot::Value>)> {
    let (sink, mut source) = tokio::sync::mpsc::channel(4);
    let reading = s.export_snapshot(sink);
    let collecting = async {
        let mut all = Vec::new();
        let mut ended = false;
        while let Some(chunk) = source.recv().await {
            match chunk {
                snapshot::Chunk::Rows { table, rows } => {
                    all.extend(rows.into_iter().map(|r| (table, r)))
                }
                snapshot::Chunk::End => ended = true,
            }
        }
        assert!(ended, "the snapshot must end with End");
        all
    };
    let (read, all) = tokio::join!(reading, collecting);
    read.unwrap();
    all
}

/// A bit of everything, through the contract's own writes.
async fn fill(s: &Arc<dyn Store>) {
    two_tenants(s).await;
    s.meta_put_if_absent("kek_id", b"kek_1".to_vec())
        .await
        .unwrap();
    s.add_first_key(key("kek_1", 1)).await.unwrap();
    let mut c = credential("ten_a", "cred_1", "Stripe billing", "stripe");
    c.checked_at = Some(t(9));
    c.status_message = Some("ok".into());
    s.insert_credential(
        c,
        vec![
            secret("api_key", &[9, 0, 255, 7]),
            secret("webhook_secret", b"sealed"),
        ],
        audit("ten_a", "credential.create"),
    )
    .await
    .unwrap();
    for n in 0..(snapshot::BATCH_ROWS + 20) {
        s.insert_credential(
            credential(
                "ten_b",
                &format!("cred_b{n:04}"),
                &format!("Beta {n}"),
                "github",
            ),
            vec![secret("api_key", &[n as u8])],
            audit("ten_b", "credential.create"),
        )
        .await
        .unwrap();
    }
    // Newer than every "Beta" name and more than a search scans before it
    // asks the name index: a copy's search for one must find it there.
    add_fillers(s, "ten_b", "cred_bz").await;
    s.create_service(
        service("ten_a", "svc_1", "Hooks"),
        audit("ten_a", "service.create"),
    )
    .await
    .unwrap();
    assert!(s
        .insert_event(event("ten_a", "evt_1", "cred_1", "webhook", Some("d1")))
        .await
        .unwrap());
    assert!(s
        .insert_event(event("ten_a", "evt_2", "cred_1", "action", None))
        .await
        .unwrap());
    let mapping = UserMapping {
        app_user_id: "U1".into(),
        user_id: "user_1".into(),
        created_at: t(6),
    };
    s.put_user_mapping("ten_a", "cred_1", mapping, audit("ten_a", "mapping.put"))
        .await
        .unwrap();
    s.add_counters(vec![CounterDelta {
        credential_id: "cred_1".into(),
        kind: "webhook".into(),
        outcome: "accepted".into(),
        count: 2,
    }])
    .await
    .unwrap();
    s.create_session(SessionRecord {
        id_hash: hash(7),
        token_id: "tok_a1".into(),
        csrf: "csrf".into(),
        created_at: t(7),
        expires_at: t(7200),
    })
    .await
    .unwrap();
    s.revoke_token("ten_b", "tok_b1", t(8), audit("ten_b", "token.revoke"))
        .await
        .unwrap();
}

#[tokio::test]
async fn copy_moves_every_row_between_backends_and_refuses_a_used_target() {
    let Some(schema) = postgres_or_skip().await else {
        return;
    };
    let name = schema.name.clone();
    let outcome = tokio::spawn(async move {
        let dir = tempfile::tempdir().unwrap();
        let from: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
        fill(&from).await;
        let original = snapshot_rows(&*from).await;
        let tables: std::collections::BTreeSet<_> = original.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            tables.len(),
            snapshot::TABLES.len(),
            "fill writes every table"
        );

        // SQLite to PostgreSQL, then back to a new SQLite file: the same rows.
        let pg: Arc<dyn Store> = Arc::new(
            PostgresStore::connect_in_schema(&postgres_url(), &name)
                .await
                .unwrap(),
        );
        let report = snapshot::copy(&*from, &*pg).await.unwrap();
        assert_eq!(
            report["credentials"],
            (snapshot::BATCH_ROWS + 21 + SEARCH_WINDOW_ROWS) as u64
        );
        assert_eq!(
            report["credential_secrets"],
            snapshot::BATCH_ROWS as u64 + 22
        );
        assert_eq!(report.values().sum::<u64>(), original.len() as u64);
        assert_eq!(snapshot_rows(&*pg).await, original);
        let back: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("b.db")).unwrap());
        snapshot::copy(&*pg, &*back).await.unwrap();
        assert_eq!(snapshot_rows(&*back).await, original);

        // The copies work as stores: lookups, search, sessions, dedup.
        for s in [&pg, &back] {
            let (c, sealed) = s.get_sealed("ten_a", "cred_1").await.unwrap().unwrap();
            assert_eq!(c.name, "Stripe billing");
            assert_eq!(
                secrets(&sealed)[0],
                ("api_key".to_string(), vec![9, 0, 255, 7])
            );
            let f = CredentialFilter {
                q: Some("beta 51".into()),
                ..Default::default()
            };
            let hits = s.list_credentials("ten_b", &f, first(50)).await.unwrap();
            assert_eq!(hits.items.len(), 11, "Beta 51 and 510..519");
            assert!(s.find_session(hash(7), t(8)).await.unwrap().is_some());
            assert!(
                s.find_token(hash(2)).await.unwrap().is_none(),
                "revoked stays revoked"
            );
            assert!(!s
                .insert_event(event("ten_a", "evt_9", "cred_1", "webhook", Some("d1")))
                .await
                .unwrap());
            // New rows number after the copied ones.
            s.insert_credential(
                credential("ten_a", "cred_new", "Newest", "stripe"),
                vec![],
                audit("ten_a", "credential.create"),
            )
            .await
            .unwrap();
            let all = CredentialFilter::default();
            let page = s.list_credentials("ten_a", &all, first(50)).await.unwrap();
            assert_eq!(page.items.len(), 2);
        }

        // A target with any row is refused, and keeps what it had.
        let before = snapshot_rows(&*back).await;
        let e = snapshot::copy(&*from, &*back).await.unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        assert_eq!(snapshot_rows(&*back).await, before);

        // Rows that stop before the end leave the target empty.
        for target in [
            Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap()) as Arc<dyn Store>,
            Arc::new(
                PostgresStore::connect_in_schema(&postgres_url(), &format!("{name}_c"))
                    .await
                    .unwrap(),
            ),
        ] {
            let (sink, source) = tokio::sync::mpsc::channel(4);
            let rows = original.iter().filter(|(t, _)| *t <= 3).cloned();
            let mut by_table: BTreeMap<usize, Vec<_>> = BTreeMap::new();
            for (t, r) in rows {
                by_table.entry(t).or_default().push(r);
            }
            let feeding = async move {
                for (table, rows) in by_table {
                    sink.send(snapshot::Chunk::Rows { table, rows })
                        .await
                        .unwrap();
                }
                // No End: the source "died".
            };
            let (_, result) = tokio::join!(feeding, target.import_snapshot(source));
            let e = result.unwrap_err();
            assert!(e.to_string().contains("stopped before the end"), "{e}");
            assert!(snapshot_rows(&*target).await.is_empty());
        }
    })
    .await;
    schema
        .admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {}_c CASCADE", schema.name))
        .await
        .unwrap();
    schema.drop_schema().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn key(id: &str, secs: i64) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        state: KeyState::Active,
        key_check: vec![9, 9, id.len() as u8],
        created_at: t(secs),
        retired_at: None,
    }
}

fn rewrap_of(w: &WrappedKey, to: &str) -> Rewrap {
    Rewrap {
        id: w.id.clone(),
        from_kek: w.kek_id.clone(),
        to_kek: to.into(),
        wrapped_dek: vec![7, 7, 7],
    }
}

#[tokio::test]
async fn master_key_rotation_states() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        assert!(s.list_keys().await.unwrap().is_empty());
        assert!(s.add_first_key(key("kek_1", 1)).await.unwrap());
        assert!(!s.add_first_key(key("kek_x", 1)).await.unwrap(), "only the first");
        let keys = s.list_keys().await.unwrap();
        assert_eq!(keys, vec![key("kek_1", 1)]);

        for i in 0..5 {
            s.insert_credential(
                credential("ten_a", &format!("cred_{i}"), &format!("c{i}"), "stripe"),
                vec![secret("api_key", b"sealed")],
                audit("ten_a", "credential.create"),
            )
            .await
            .unwrap();
        }
        assert_eq!(s.key_usage().await.unwrap(), vec![("kek_1".to_string(), 5)]);

        // Only from the active key, to a new one, with nothing draining.
        for (from, to) in [("kek_2", "kek_3"), ("kek_1", "kek_1")] {
            assert!(matches!(
                err(s.rotate_key(from, key(to, 2), audit("ten_a", "keys.rotate")).await),
                StoreError::Conflict
            ));
        }
        let audits = audit_count(&s, "ten_a").await;
        s.rotate_key("kek_1", key("kek_2", 2), audit("ten_a", "keys.rotate"))
            .await
            .unwrap();
        assert_eq!(audit_count(&s, "ten_a").await, audits + 1);
        let states: Vec<(String, KeyState)> = s
            .list_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| (k.id, k.state))
            .collect();
        assert_eq!(
            states,
            vec![("kek_1".into(), KeyState::Draining), ("kek_2".into(), KeyState::Active)]
        );
        assert!(matches!(
            err(s.rotate_key("kek_2", key("kek_3", 3), audit("ten_a", "keys.rotate")).await),
            StoreError::Conflict
        ), "one rotation at a time");

        // Re-wrap in batches; a row is changed only while still on its old key.
        let first = s.wrapped_keys("kek_1", 3).await.unwrap();
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|w| w.kek_id == "kek_1" && w.wrapped_dek == vec![1, 2, 3, 0, 255]));
        let batch: Vec<Rewrap> = first.iter().map(|w| rewrap_of(w, "kek_2")).collect();
        assert_eq!(s.rewrap(batch.clone()).await.unwrap(), 3);
        assert_eq!(s.rewrap(batch).await.unwrap(), 0, "already moved: no change");
        let moved = s.get_credential("ten_a", &first[0].id).await.unwrap().unwrap();
        assert_eq!((moved.kek_id.as_str(), moved.wrapped_dek.clone()), ("kek_2", vec![7, 7, 7]));
        assert_eq!(moved.version, 1, "re-wrapping is not a change of the credential");

        // Not retired while a row uses it.
        assert!(!s.retire_key("kek_1", audit("ten_a", "keys.retire")).await.unwrap());
        let rest = s.wrapped_keys("kek_1", 100).await.unwrap();
        assert_eq!(rest.len(), 2);
        s.rewrap(rest.iter().map(|w| rewrap_of(w, "kek_2")).collect())
            .await
            .unwrap();
        assert_eq!(s.key_usage().await.unwrap(), vec![("kek_2".to_string(), 5)]);
        assert!(!s.retire_key("kek_2", audit("ten_a", "keys.retire")).await.unwrap(), "not the active key");
        assert!(s.retire_key("kek_1", audit("ten_a", "keys.retire")).await.unwrap());
        let retired = s.list_keys().await.unwrap().remove(0);
        assert_eq!(retired.state, KeyState::Retired);
        assert!(retired.retired_at.is_some());

        // Nothing wrapped by a retired key is written again.
        let late = credential("ten_a", "cred_late", "late", "stripe");
        assert!(matches!(
            err(s.insert_credential(late.clone(), vec![], audit("ten_a", "credential.create")).await),
            StoreError::KeyRetired(k) if k == "kek_1"
        ));
        assert!(matches!(
            err(s.import_credentials(vec![ImportItem::Insert(late, vec![])], audit("ten_a", "credential.import")).await),
            StoreError::KeyRetired(_)
        ));
        assert!(s.get_credential("ten_a", "cred_late").await.unwrap().is_none());
        let back = Rewrap { id: "cred_0".into(), from_kek: "kek_2".into(), to_kek: "kek_1".into(), wrapped_dek: vec![1] };
        assert!(matches!(err(s.rewrap(vec![back]).await), StoreError::KeyRetired(_)));
        assert_eq!(s.key_usage().await.unwrap(), vec![("kek_2".to_string(), 5)]);
        // A retired key never comes back.
        assert!(matches!(
            err(s.rotate_key("kek_2", key("kek_1", 9), audit("ten_a", "keys.rotate")).await),
            StoreError::Conflict
        ));
    })
    .await;
}

/// Creates that wrap their data keys with a draining master key, racing its
/// retirement: a create either commits before the retirement looks for users
/// of the key (which then refuses, the key being in use) or is refused with
/// `KeyRetired`. A retired key is never left wrapping a stored data key.
#[tokio::test]
async fn retiring_a_key_races_no_create_that_uses_it() {
    each_backend(|s| async move {
        two_tenants(&s).await;
        assert!(s.add_first_key(key("kek_0", 1)).await.unwrap());
        let (mut refused, mut kept) = (0, 0);
        for round in 0..36 {
            let (old, new) = (format!("kek_{round}"), format!("kek_{}", round + 1));
            s.rotate_key(&old, key(&new, 2), audit("ten_a", "keys.rotate"))
                .await
                .unwrap();
            let mut racers = JoinSet::new();
            for i in 0..12 {
                // The retirement goes in ahead of a different share of the creates each round.
                if i == round % 12 {
                    let (s, old) = (s.clone(), old.clone());
                    racers.spawn(async move {
                        s.retire_key(&old, audit("ten_a", "keys.retire"))
                            .await
                            .map(Some)
                    });
                }
                let (store, kek) = (s.clone(), old.clone());
                racers.spawn(async move {
                    let mut rec = credential(
                        "ten_a",
                        &format!("cred_{round}_{i}"),
                        &format!("r{round} {i}"),
                        "stripe",
                    );
                    rec.kek_id = kek;
                    store
                        .insert_credential(
                            rec,
                            vec![secret("api_key", b"sealed")],
                            audit("ten_a", "credential.create"),
                        )
                        .await
                        .map(|()| None)
                });
            }
            let mut retired = None;
            while let Some(r) = racers.join_next().await {
                match r.unwrap() {
                    Ok(Some(done)) => retired = Some(done),
                    Ok(None) => kept += 1,
                    Err(StoreError::KeyRetired(k)) => {
                        assert_eq!(k, old);
                        refused += 1;
                    }
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
            let users = s.wrapped_keys(&old, 10_000).await.unwrap();
            if retired.expect("the retirement answered") {
                assert!(
                    users.is_empty(),
                    "round {round}: {old} retired while {} rows use it",
                    users.len()
                );
            } else {
                assert!(
                    !users.is_empty(),
                    "round {round}: {old} not retired, yet unused"
                );
                // Gone, not moved to the next key, so each round's key
                // starts unused.
                for w in &users {
                    s.delete_credential(&w.tenant_id, &w.id, audit("ten_a", "credential.delete"))
                        .await
                        .unwrap();
                }
                let again = s.retire_key(&old, audit("ten_a", "keys.retire")).await;
                assert!(
                    again.unwrap(),
                    "round {round}: {old} still used: {:?}",
                    s.key_usage().await.unwrap()
                );
            }
        }
        // Both outcomes happen in some round; which, is up to timing.
        assert!(kept > 0, "no create went in before a retirement");
        assert!(refused > 0, "no create came after a retirement");
        eprintln!("{kept} creates kept, {refused} refused");
    })
    .await;
}

/// PostgreSQL's group commit of creates: creates that arrive together go in
/// with one statement, and each is answered as if it had been alone. A name
/// taken by a stored credential, or by an earlier create of the same group,
/// is refused with its holder; a retired key with `KeyRetired`; the others
/// are stored whole (secrets, the last of a repeated field winning, and one
/// audit entry each). A group whose statement fails (here, a tenant that
/// does not exist) is tried create by create, so only the bad one fails.
#[tokio::test]
async fn postgres_creates_together_answer_each_as_alone() {
    let Some(schema) = postgres_or_skip().await else {
        return;
    };
    let name = schema.name.clone();
    schema
        .run(async move {
        let pg = Arc::new(
            PostgresStore::connect_in_schema(&postgres_url(), &name)
                .await
                .unwrap(),
        );
        let s: Arc<dyn Store> = pg.clone();
        two_tenants(&s).await;
        assert!(s.add_first_key(key("kek_0", 1)).await.unwrap());
        s.rotate_key("kek_0", key("kek_1", 2), audit("ten_a", "keys.rotate"))
            .await
            .unwrap();
        assert!(s
            .retire_key("kek_0", audit("ten_a", "keys.retire"))
            .await
            .unwrap());
        s.insert_credential(
            credential("ten_a", "cred_g_taken", "Taken", "x"),
            vec![],
            audit("ten_a", "credential.create"),
        )
        .await
        .unwrap();
        let (audited_a, audited_b) = (
            audit_count(&s, "ten_a").await,
            audit_count(&s, "ten_b").await,
        );

        let mut checked = credential("ten_a", "cred_g5", "Gamma", "stripe");
        checked.status = "invalid".into();
        checked.status_message = Some("the key was refused".into());
        checked.checked_at = Some(t(4));
        let mut old_key = credential("ten_a", "cred_g3", "Old key", "x");
        old_key.kek_id = "kek_0".into();
        let group = vec![
            (
                credential("ten_a", "cred_g0", "Alpha", "x"),
                vec![
                    secret("api_key", b"a1"),
                    secret("token", b"t"),
                    secret("api_key", b"a2"),
                ],
                audit("ten_a", "credential.create"),
            ),
            (
                credential("ten_a", "cred_g1", "ALPHA", "x"),
                vec![secret("api_key", b"lost")],
                audit("ten_a", "credential.create"),
            ),
            (
                credential("ten_a", "cred_g2", "taken", "x"),
                vec![],
                audit("ten_a", "credential.create"),
            ),
            (old_key, vec![], audit("ten_a", "credential.create")),
            (
                credential("ten_b", "cred_g4", "Alpha", "x"),
                vec![secret("api_key", b"b")],
                audit("ten_b", "credential.create"),
            ),
            (checked.clone(), vec![], audit("ten_a", "credential.create")),
        ];
        let answers = pg.insert_credentials(group).await.expect("one statement");
        let answers: Vec<std::result::Result<(), String>> = answers
            .into_iter()
            .map(|r| r.map_err(|e| format!("{e:?}")))
            .collect();
        assert_eq!(
            answers,
            vec![
                Ok(()),
                Err(format!("{:?}", StoreError::NameTaken("cred_g0".into()))),
                Err(format!(
                    "{:?}",
                    StoreError::NameTaken("cred_g_taken".into())
                )),
                Err(format!("{:?}", StoreError::KeyRetired("kek_0".into()))),
                Ok(()),
                Ok(()),
            ]
        );
        let (rec, sealed) = s.get_sealed("ten_a", "cred_g0").await.unwrap().unwrap();
        assert_eq!(rec, credential("ten_a", "cred_g0", "Alpha", "x"));
        let mut sealed = secrets(&sealed);
        sealed.sort();
        assert_eq!(
            sealed,
            secrets(&[secret("api_key", b"a2"), secret("token", b"t")])
        );
        let (_, sealed) = s.get_sealed("ten_b", "cred_g4").await.unwrap().unwrap();
        assert_eq!(secrets(&sealed), secrets(&[secret("api_key", b"b")]));
        assert_eq!(
            s.get_credential("ten_a", "cred_g5").await.unwrap(),
            Some(checked)
        );
        for refused in ["cred_g1", "cred_g2", "cred_g3"] {
            assert_eq!(
                s.get_credential("ten_a", refused).await.unwrap(),
                None,
                "{refused}"
            );
        }
        assert_eq!(audit_count(&s, "ten_a").await, audited_a + 2);
        assert_eq!(audit_count(&s, "ten_b").await, audited_b + 1);

        // An id repeated in a group: the first create has it, the second is
        // tried alone and refused.
        let answers = pg
            .insert_credentials(vec![
                (
                    credential("ten_a", "cred_g6", "Zeta", "x"),
                    vec![secret("api_key", b"z")],
                    audit("ten_a", "credential.create"),
                ),
                (
                    credential("ten_a", "cred_g6", "Eta", "x"),
                    vec![secret("token", b"e")],
                    audit("ten_a", "credential.create"),
                ),
            ])
            .await
            .expect("one statement");
        assert!(answers[0].is_ok(), "{:?}", answers[0]);
        let alone = s
            .insert_credential(
                credential("ten_a", "cred_g6", "Eta", "x"),
                vec![secret("token", b"e")],
                audit("ten_a", "credential.create"),
            )
            .await;
        assert_eq!(
            format!("{:?}", answers[1]),
            format!("{alone:?}"),
            "a repeated id is answered as a create alone"
        );
        assert!(alone.is_err(), "a second create of one id went in");
        let (rec, sealed) = s.get_sealed("ten_a", "cred_g6").await.unwrap().unwrap();
        assert_eq!(rec.name, "Zeta");
        assert_eq!(secrets(&sealed), secrets(&[secret("api_key", b"z")]));
        assert_eq!(audit_count(&s, "ten_a").await, audited_a + 3);
        let audited_a = audited_a + 1;

        // A name whose lock another transaction holds is not waited for by
        // the group: the group's other creates are stored meanwhile, and
        // that one goes in alone once the lock is released.
        let (mut holder, connection) = postgres_url()
            .parse::<tokio_postgres::Config>()
            .unwrap()
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let holding = holder.transaction().await.unwrap();
        holding
            .execute(
                "SELECT pg_advisory_xact_lock(2, hashtext('ten_a/' || lower('Held' COLLATE \"C\")))",
                &[],
            )
            .await
            .unwrap();
        let group = tokio::spawn({
            let pg = pg.clone();
            async move {
                pg.insert_credentials(vec![
                    (
                        credential("ten_a", "cred_l0", "Held", "x"),
                        vec![],
                        audit("ten_a", "credential.create"),
                    ),
                    (
                        credential("ten_a", "cred_l1", "Free", "x"),
                        vec![],
                        audit("ten_a", "credential.create"),
                    ),
                ])
                .await
            }
        });
        let mut free = None;
        for _ in 0..100 {
            free = s.get_credential("ten_a", "cred_l1").await.unwrap();
            if free.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(free.is_some(), "the group waited for another create's lock");
        assert_eq!(s.get_credential("ten_a", "cred_l0").await.unwrap(), None);
        assert!(!group.is_finished(), "the held name did not wait for its lock");
        holding.commit().await.unwrap();
        let answers = group.await.unwrap().expect("one statement");
        assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
        assert!(s.get_credential("ten_a", "cred_l0").await.unwrap().is_some());
        let audited_a = audited_a + 2;

        // Through the group commit: creates whose names are held (more of
        // them than there are writers) wait alone, and do not hold up the
        // creates queued behind them.
        let holding = holder.transaction().await.unwrap();
        for n in 0..3 {
            holding
                .execute(
                    "SELECT pg_advisory_xact_lock(2, hashtext('ten_a/' || lower($1::text COLLATE \"C\")))",
                    &[&format!("held {n}")],
                )
                .await
                .unwrap();
        }
        let mut waiting = JoinSet::new();
        for n in 0..3 {
            let s = s.clone();
            waiting.spawn(async move {
                s.insert_credential(
                    credential("ten_a", &format!("cred_w{n}"), &format!("Held {n}"), "x"),
                    vec![],
                    audit("ten_a", "credential.create"),
                )
                .await
            });
            // Each in a group of its own.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for n in 0..5 {
            let free = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                s.insert_credential(
                    credential("ten_a", &format!("cred_f{n}"), &format!("Free {n}"), "x"),
                    vec![],
                    audit("ten_a", "credential.create"),
                ),
            )
            .await
            .expect("a create waited behind a held name");
            free.unwrap();
        }
        for n in 0..3 {
            let id = format!("cred_w{n}");
            assert_eq!(s.get_credential("ten_a", &id).await.unwrap(), None, "{id}");
        }
        holding.commit().await.unwrap();
        while let Some(joined) = waiting.join_next().await {
            joined.unwrap().unwrap();
        }
        let audited_a = audited_a + 8;

        let delta = (
            credential("ten_a", "cred_h0", "Delta", "x"),
            vec![secret("api_key", b"d")],
            audit("ten_a", "credential.create"),
        );
        let failed = pg
            .insert_credentials(vec![
                delta.clone(),
                (
                    credential("ten_none", "cred_h1", "Epsilon", "x"),
                    vec![],
                    audit("ten_none", "credential.create"),
                ),
            ])
            .await;
        assert!(
            failed.is_err(),
            "a create for no tenant went in: {failed:?}"
        );
        assert_eq!(
            s.get_credential("ten_a", "cred_h0").await.unwrap(),
            None,
            "half a group stored"
        );
        assert_eq!(audit_count(&s, "ten_a").await, audited_a + 2);

        // Through the group commit, at once: a failing group is retried
        // create by create, so the good ones go in.
        let mut racers = JoinSet::new();
        for n in 0..8 {
            let (s, mut create) = (s.clone(), delta.clone());
            create.0.id = format!("cred_h{n}");
            create.0.name = format!("Delta {n}");
            create.2 = audit("ten_a", "credential.create");
            if n == 3 {
                create.0.tenant_id = "ten_none".into();
            }
            racers
                .spawn(async move { (n, s.insert_credential(create.0, create.1, create.2).await) });
        }
        while let Some(joined) = racers.join_next().await {
            let (n, r) = joined.unwrap();
            assert_eq!(r.is_ok(), n != 3, "create {n}: {r:?}");
        }
        let (_, sealed) = s.get_sealed("ten_a", "cred_h7").await.unwrap().unwrap();
        assert_eq!(secrets(&sealed), secrets(&[secret("api_key", b"d")]));
        assert_eq!(audit_count(&s, "ten_a").await, audited_a + 9);
    })
    .await;
}

/// A PostgreSQL store opens no more connections than its pool size, however
/// many calls run at once (the count is sampled while they run), and the
/// smallest pool still serves creates, ingress events (whose writers keep
/// a connection for good) and reads together: no call stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_pool_opens_no_more_connections_than_its_size() {
    let Some(schema) = postgres_or_skip().await else {
        return;
    };
    let name = schema.name.clone();
    let counter = Arc::new(Schema::new().await.unwrap().admin);
    schema
        .run(async move {
            for size in [PostgresStore::MIN_POOL_SIZE, 3] {
                // The connections of this store, and only these, carry this name.
                let app = format!("pool{size}_{name}");
                let url = postgres_url();
                let sep = if url.contains('?') { '&' } else { '?' };
                let url = format!("{url}{sep}application_name={app}");
                let store = PostgresStore::open_unmigrated_with_pool(&url, Some(&name), size).unwrap();
                store.migrate().await.unwrap();
                let s: Arc<dyn Store> = Arc::new(store);
                if size == PostgresStore::MIN_POOL_SIZE {
                    two_tenants(&s).await;
                    s.insert_credential(
                        credential("ten_a", "cred_ev", "Events", "stripe"),
                        vec![secret("api_key", b"k")],
                        audit("ten_a", "credential.create"),
                    )
                    .await
                    .unwrap();
                }
                let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let sampler = tokio::spawn({
                    let (counter, app, done) = (counter.clone(), app.clone(), done.clone());
                    async move {
                        let mut most = 0i64;
                        while !done.load(Ordering::Relaxed) {
                            let open: i64 = counter
                                .query_one(
                                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                                    &[&app],
                                )
                                .await
                                .unwrap()
                                .get(0);
                            most = most.max(open);
                        }
                        most
                    }
                });
                let burst = async {
                    for wave in 0..4 {
                        let mut calls = JoinSet::new();
                        for n in 0..32 {
                            let s = s.clone();
                            let id = format!("p{size}_{wave}_{n}");
                            calls.spawn(async move {
                                match n % 4 {
                                    0 => s
                                        .insert_credential(
                                            credential("ten_a", &format!("cred_{id}"), &id, "stripe"),
                                            vec![secret("api_key", b"k")],
                                            audit("ten_a", "credential.create"),
                                        )
                                        .await
                                        .map(|_| ()),
                                    1 => s
                                        .insert_event(event(
                                            "ten_a",
                                            &format!("evt_{id}"),
                                            "cred_ev",
                                            "webhook",
                                            None,
                                        ))
                                        .await
                                        .map(|new| assert!(new)),
                                    _ => s.find_token(hash(1)).await.map(|found| {
                                        assert_eq!(found.unwrap().0.id, "tok_a1");
                                    }),
                                }
                            });
                        }
                        while let Some(joined) = calls.join_next().await {
                            joined.unwrap().unwrap();
                        }
                    }
                };
                tokio::time::timeout(std::time::Duration::from_secs(60), burst)
                    .await
                    .unwrap_or_else(|_| panic!("a pool of {size} stalled"));
                done.store(true, Ordering::Relaxed);
                let most = sampler.await.unwrap();
                assert!(
                    (1..=size as i64).contains(&most),
                    "a pool of {size} had {most} connections open at once"
                );
            }
        })
        .await;
}
