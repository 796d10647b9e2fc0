//! Envelope encryption as the data on disk shows it: no secret in the clear,
//! ciphertexts bound to their row, and a wrong master key refused at start.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::helpers::*;

const CANARY: &str = "CANARYcanaryCANARYcanaryCANARY42";
const CANARY_PARAM: &str = "c0ffee00c0ffee00c0ffee00c0ffee00";

#[tokio::test]
async fn the_database_files_contain_no_secret() {
    if !on_sqlite() {
        eprintln!("SQLite-only: this test reads the database file itself");
        return;
    }
    let app = spawn_app().await;
    let mut body = twilio("Canary", CANARY);
    body["config_params"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "key": "webhook_secret", "value": CANARY_PARAM }));
    let created = app.create(&body).await;
    // A rotation writes the secret again; the old one must not linger either.
    let res = app
        .req(
            reqwest::Method::PATCH,
            &format!("/v1/credentials/{}", created["id"].as_str().unwrap()),
            &app.token,
        )
        .header("If-Match", "1")
        .json(&json!({ "api_key": twilio_key('z'), "validate": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let dir = app.dir.path().to_path_buf();
    let mut scanned = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "master.key" {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for needle in [CANARY, CANARY_PARAM, &twilio_key('z')] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} found in {}",
                path.display()
            );
        }
        scanned += bytes.len();
    }
    assert!(
        scanned > 4096,
        "the scan read the database ({scanned} bytes)"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_credential_fails_to_open() {
    if !on_sqlite() {
        eprintln!("SQLite-only: this test reads the database file itself");
        return;
    }
    let app = spawn_app().await;
    let a = app.create(&stripe("A")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = app.create(&stripe("B")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = app.stop().await;

    let db = rusqlite::Connection::open(dir.path().join("latchkey.db")).unwrap();
    let tenant: String = db
        .query_row(
            "SELECT tenant_id FROM credentials WHERE id = ?1",
            [&a],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE credential_secrets SET sealed = (SELECT sealed FROM credential_secrets WHERE credential_id = ?1)
         WHERE credential_id = ?2",
        [&a, &b],
    )
    .unwrap();
    drop(db);

    let store = storage::SqliteStore::open(&dir.path().join("latchkey.db")).unwrap();
    let (ring, _) = crypto::KeyRing::load_or_create(None, &dir.path().join("master.key")).unwrap();
    let keys = server::app::Keys::new(ring.clone(), ring.keys()[0].clone(), None);
    let policy =
        services::validate::OutboundPolicy::new(&[], std::time::Duration::from_secs(1)).unwrap();
    let app = server::App::new(
        Arc::new(store),
        keys,
        domain::Catalog::builtin().unwrap(),
        String::new(),
        services::validate::Validator::new(policy).unwrap(),
    );
    let opened = app.open_secrets(&tenant, &a).await.unwrap();
    assert_eq!(
        opened["api_key"].expose_secret(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    let err = app.open_secrets(&tenant, &b).await.unwrap_err();
    assert!(err.to_string().contains("internal"), "{err}");
    assert!(
        app.open_secrets("ten_other", &a).await.is_err(),
        "another tenant cannot open it"
    );
}

#[tokio::test]
async fn start_up_refuses_a_master_key_that_does_not_match_the_data() {
    let app = spawn_app().await;
    assert!(
        !app.token.is_empty(),
        "the first start prints an admin token"
    );
    app.create(&stripe("Keep me")).await;
    let dir = app.stop().await;
    let key_file = dir.path().join("master.key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let good_key = std::fs::read_to_string(&key_file).unwrap();

    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (err, dir) = spawn_app_in(dir, Some(wrong))
        .await
        .err()
        .expect("a wrong key must refuse start-up");
    let message = format!("{err:#}");
    assert!(message.contains("does not match"), "{message}");
    assert!(
        message.contains("kek_"),
        "the message names both fingerprints: {message}"
    );

    // The right key in the environment starts it again, with no new admin token.
    spawn_app_again(&key_file, &good_key).await;
    drop(dir);
}

/// Restarts over the data dir of `key_file` with the key given in the environment.
async fn spawn_app_again(key_file: &std::path::Path, key: &str) {
    let data_dir = key_file.parent().unwrap().to_path_buf();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (report, serving) = server::start(
        server::Config {
            master_key: Some(SecretString::from(key.trim().to_string())),
            ..test_config(&data_dir)
        },
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    assert!(report.first_admin_token.is_none());
    assert_eq!(report.key_source, crypto::KeySource::Environment);
    let handle = tokio::spawn(serving);
    let res = reqwest::get(format!("http://{}/readyz", report.addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_missing_key_file_is_reported_not_replaced() {
    let app = spawn_app().await;
    let dir = app.stop().await;
    std::fs::remove_file(dir.path().join("master.key")).unwrap();
    let (err, _dir) = spawn_app_in(dir, None)
        .await
        .err()
        .expect("start-up must refuse");
    assert!(format!("{err:#}").contains("no master key"), "{err:#}");
}

#[tokio::test]
async fn secrets_leave_only_as_set_and_last4() {
    let app = spawn_app().await;
    let created = app
        .create(&twilio("Short and long", &twilio_key('k')))
        .await;
    let text: Value = app.get("/v1/credentials").await.json().await.unwrap();
    assert!(!text.to_string().contains(&twilio_key('k')));
    assert_eq!(created["api_key"]["last4"], "WXYZ");
}
