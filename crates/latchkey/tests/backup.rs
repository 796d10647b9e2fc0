//! `latchkey backup` takes a consistent snapshot of a serving installation
//! into one new file (mode 0600, never overwriting), and `latchkey restore`
//! brings it back into a new data dir, or a PostgreSQL schema, where the
//! original master key opens every secret again.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::*;

async fn names(http: &reqwest::Client, base: &str, token: &str) -> Vec<String> {
    all_pages(http, base, "/v1/credentials", token)
        .await
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_restores_to_sqlite_and_postgres_with_the_original_key() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let http = client();
    let source = start(&src, &[]);
    let token = source.token.clone().unwrap();
    let hooks = create(&http, &source.base, &token, &stripe("Hooks"))
        .await
        .unwrap();
    let mut before = vec!["Hooks".to_string()];
    for n in 0..20 {
        let name = format!("before {n}");
        create(&http, &source.base, &token, &stripe(&name))
            .await
            .unwrap();
        before.push(name);
    }
    assert!(deliver(&http, &source.base, &hooks, "evt_before")
        .await
        .is_some());

    // Writes keep going while the backup runs.
    let writing = Arc::new(AtomicBool::new(true));
    let during = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (http, base, token) = (http.clone(), source.base.clone(), token.clone());
        let (writing, during) = (writing.clone(), during.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while writing.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("during {n}");
                if create(&http, &base, &token, &stripe(&name)).await.is_some() {
                    during.lock().unwrap().push(name);
                }
            }
        })
    };
    let file = dir.path().join("backups/latchkey-backup.db");
    std::fs::create_dir(dir.path().join("backups")).unwrap();
    let from = format!("sqlite://{}", src.display());
    let out = latchkey(&["backup", "--from", &from, "--to", file.to_str().unwrap()]);
    writing.store(false, Ordering::Relaxed);
    load.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("credentials"), "{}", text(&out));
    let during = during.lock().unwrap().clone();
    assert!(!during.is_empty(), "writes ran during the backup");

    // One private file and nothing else: no WAL, no partial file left.
    let files: Vec<_> = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["latchkey-backup.db"]);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = latchkey(&["backup", "--from", &from, "--to", file.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("never overwrites"),
        "{}",
        text(&again)
    );

    // Restore into a new data dir; start it with the original key.
    let key = std::fs::read_to_string(src.join("master.key")).unwrap();
    let restored = dir.path().join("restored");
    let to = format!("sqlite://{}", restored.display());
    let out = latchkey(&["restore", "--from", file.to_str().unwrap(), "--to", &to]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(restored.join("master.key"), &key).unwrap();
    let back = start(&restored, &[]);
    let got = names(&http, &back.base, &token).await;
    for name in &before {
        assert!(
            got.contains(name),
            "{name} was written before the backup: {got:?}"
        );
    }
    // A snapshot: whatever of the concurrent writes it has, it has whole.
    let total = before.len() + during.len();
    assert!(
        got.len() >= before.len() && got.len() <= total,
        "{} of {total}",
        got.len()
    );
    assert!(deliver(&http, &back.base, &hooks, "evt_after")
        .await
        .is_some());
    assert!(deliver(&http, &back.base, &hooks, "evt_before")
        .await
        .is_none());

    // A restore never lands on data.
    let out = latchkey(&["restore", "--from", file.to_str().unwrap(), "--to", &to]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    let out = latchkey(&["restore", "--from", "/nonexistent/b.db", "--to", &to]);
    assert!(text(&out).contains("no backup file"), "{}", text(&out));

    // The same file restores into PostgreSQL.
    let Some(schema) = pg_schema().await else {
        return;
    };
    let url = postgres_url();
    let out = latchkey(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--to",
        &url,
        "--to-schema",
        &schema.name,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let pg_dir = dir.path().join("pg");
    std::fs::create_dir(&pg_dir).unwrap();
    std::fs::write(pg_dir.join("master.key"), &key).unwrap();
    let on_pg = start(
        &pg_dir,
        &["--database-url", &url, "--database-schema", &schema.name],
    );
    let mut on_pg_names = names(&http, &on_pg.base, &token).await;
    let mut sqlite_names = got.clone();
    on_pg_names.sort();
    sqlite_names.sort();
    assert_eq!(on_pg_names, sqlite_names);
    assert!(deliver(&http, &on_pg.base, &hooks, "evt_pg")
        .await
        .is_some());
    drop(on_pg);
    schema.drop_schema().await;
}
