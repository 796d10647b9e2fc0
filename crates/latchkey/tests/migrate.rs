//! `latchkey migrate status|apply` against a fresh schema of the local
//! PostgreSQL (`LATCHKEY_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`): status lists pending, apply
//! applies them, status lists them applied. Skipped, with a note, when no
//! PostgreSQL answers, except in CI.

use std::process::{Command, Output};

fn postgres_url() -> String {
    std::env::var("LATCHKEY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn migrate(action: &str, url: &str, schema: &str) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args([
            "migrate",
            action,
            "--database-url",
            url,
            "--database-schema",
            schema,
        ])
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_DATABASE_SCHEMA")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `(version, state)` lines of a status listing.
fn states(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (v, s) = (parts.next()?, parts.next()?);
            (v.chars().all(|c| c.is_ascii_digit()) && (s == "applied" || s == "pending"))
                .then(|| (v.to_string(), s.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn migrate_status_lists_pending_apply_applies_them_and_status_shows_them_applied() {
    let url = postgres_url();
    let client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) if std::env::var_os("CI").is_none() => {
            println!("skipping PostgreSQL: {url} does not answer: {e}");
            return;
        }
        Err(e) => panic!("PostgreSQL at {url} does not answer: {e}"),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = format!("t_migrate_{}_{:x}", std::process::id(), nanos);

    let client = std::sync::Arc::new(client);
    // Run in a task so that a failed check still drops the schema below.
    let checks = tokio::spawn({
        let (client, url, schema) = (client.clone(), url.clone(), schema.clone());
        async move {
            let before = states(&stdout(&migrate("status", &url, &schema)));
            assert!(!before.is_empty(), "no migrations listed");
            assert!(
                before.iter().all(|(_, s)| s == "pending"),
                "a fresh schema has every migration pending: {before:?}"
            );
            // Status changed nothing: the schema is not even there.
            let exists: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                    &[&schema],
                )
                .await
                .unwrap()
                .get(0);
            assert!(!exists, "status created the schema");

            let applied = stdout(&migrate("apply", &url, &schema));
            for (v, _) in &before {
                assert!(
                    applied.contains(&format!("applied {v}")),
                    "apply did not report {v}: {applied}"
                );
            }
            let after = states(&stdout(&migrate("status", &url, &schema)));
            assert_eq!(after.len(), before.len(), "{after:?}");
            assert!(
                after.iter().all(|(_, s)| s == "applied"),
                "every migration applied: {after:?}"
            );

            let again = stdout(&migrate("apply", &url, &schema));
            assert!(again.contains("nothing to apply"), "{again}");
        }
    });
    let outcome = checks.await;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
