//! A bearer's get through the SQLite store alone (no HTTP, no server), for
//! counting its instructions with callgrind: the count of a run repeats to
//! within a few dozen instructions in a billion, where the benchmark's
//! wall-clock figures drift with the machine.
//!
//! ```text
//! cargo build --release -p storage --example store_get
//! B=target/release/examples/store_get
//! $B /tmp/store-get 100000 0         # first run: stores 100,000 credentials
//! valgrind --tool=callgrind $B /tmp/store-get 100000 0
//! valgrind --tool=callgrind $B /tmp/store-get 100000 20000
//! ```
//!
//! The difference of the two totals ("Collected"), divided by 20,000, is
//! one turn of the loop in user space (system calls are not counted): one
//! `Store::find_token_with_credential`, plus a few hundred instructions
//! that format the id it asks for. The first run in a fresh dir only stores
//! the credentials; later runs read them, in the same pseudo-random order
//! every time. Each run closes the store at the end, which checkpoints the
//! write-ahead log into the file, so every run starts from the same file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::{TimeZone, Utc};
use storage::{
    AuditEntry, CredentialRecord, ImportItem, SecretMeta, SqliteStore, Store, TenantRecord,
    TokenRecord,
};

const USAGE: &str = "usage: store_get <dir> <credentials> <gets>";
/// The stored token's hash.
const HASH: [u8; 32] = [7; 32];
/// Credentials per write when storing them.
const BATCH: usize = 1000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, credentials, gets] = args.as_slice() else {
        bail!("{USAGE}");
    };
    let dir = PathBuf::from(dir);
    let credentials: usize = credentials
        .parse()
        .with_context(|| format!("<credentials> must be a whole number; {USAGE}"))?;
    let gets: usize = gets
        .parse()
        .with_context(|| format!("<gets> must be a whole number; {USAGE}"))?;
    if credentials == 0 {
        bail!("<credentials> must be at least 1; {USAGE}");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("latchkey.db");
    let fresh = !path.exists();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let store = runtime.block_on(async { SqliteStore::open(&path) })?;
    if fresh {
        runtime.block_on(fill(&store, credentials))?;
        store.close()?;
        println!("stored {credentials} credentials in {}", path.display());
        return Ok(());
    }
    runtime.block_on(async {
        // xorshift64: the same ids in the same order on every run.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..gets {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = credential_id((x % credentials as u64) as usize);
            let found = store
                .find_token_with_credential(HASH, &id)
                .await?
                .context("the stored token was not found")?;
            if found.credential.is_none() {
                bail!(
                    "{id} was not found: was {} filled with fewer credentials?",
                    dir.display()
                );
            }
        }
        Ok(())
    })?;
    store.close()?;
    println!("{gets} gets");
    Ok(())
}

fn credential_id(n: usize) -> String {
    format!("cred_{n:020}")
}

/// One tenant, its token, and `credentials` credentials with the columns
/// the API fills (no sealed secrets and no ingress counters: the get reads
/// neither secret, and finds no counters).
async fn fill(store: &SqliteStore, credentials: usize) -> anyhow::Result<()> {
    let at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let tenant = TenantRecord {
        id: "ten_a".into(),
        name: "Acme".into(),
        is_operator: true,
        created_at: at,
    };
    let token = TokenRecord {
        id: "tok_a".into(),
        tenant_id: tenant.id.clone(),
        name: "store_get".into(),
        role: "admin".into(),
        hash: HASH,
        created_at: at,
        created_by: "store_get".into(),
        revoked_at: None,
    };
    store.create_tenant(tenant, token, None).await?;
    for first in (0..credentials).step_by(BATCH) {
        let items = (first..(first + BATCH).min(credentials))
            .map(|n| {
                let record = CredentialRecord {
                    id: credential_id(n),
                    tenant_id: "ten_a".into(),
                    name: format!("credential {n}"),
                    description: "a credential for store_get".into(),
                    integration_id: "stripe".into(),
                    auth_type: "api_key".into(),
                    services: BTreeMap::from([("webhook".into(), "stripe.webhook".into())]),
                    scopes: vec!["read".into(), "write".into()],
                    params: BTreeMap::from([("region".into(), "eu".into())]),
                    secret_fields: vec![SecretMeta {
                        field: "api_key".into(),
                        last4: Some("1234".into()),
                    }],
                    status: "unverified".into(),
                    status_message: None,
                    checked_at: None,
                    version: 1,
                    kek_id: "kek_a".into(),
                    wrapped_dek: vec![0; 72],
                    created_at: at,
                    created_by: "tok_a".into(),
                    updated_at: at,
                    updated_by: "tok_a".into(),
                };
                ImportItem::Insert(record, vec![])
            })
            .collect();
        let audit = AuditEntry {
            id: format!("aud_{first:020}"),
            tenant_id: "ten_a".into(),
            actor_id: "tok_a".into(),
            actor_name: "store_get".into(),
            action: "credential.import".into(),
            target_type: "credential".into(),
            target_id: "store_get".into(),
            at,
            source: None,
            details: serde_json::json!({}),
        };
        store.import_credentials(items, audit).await?;
    }
    Ok(())
}
