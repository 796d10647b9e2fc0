//! `/v1/keys`: master key status and rotation through the API, on whichever
//! backend the suite runs. (Rotation under load, replicas and restarts are
//! in `crates/latchkey/tests/keys.rs`, on real processes.)

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn keys(app: &TestApp) -> Value {
    let res = app.get("/v1/keys").await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

async fn rotate(app: &TestApp, body: Value) -> (StatusCode, Value) {
    let res = app.post("/v1/keys/rotate", &body).await;
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

/// Waits until no key is draining (the server re-wraps once a second).
async fn settled(app: &TestApp) -> Value {
    for _ in 0..100 {
        let k = keys(app).await;
        if k["rotation"].is_null() {
            return k;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the rotation did not finish: {}", keys(app).await);
}

async fn delivered(app: &TestApp, id: &str, event: &str) -> StatusCode {
    let body = json!({ "id": event, "type": "invoice.paid" }).to_string();
    let ts = chrono::Utc::now().timestamp();
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    m.update(format!("{ts}.{body}").as_bytes());
    let sig = format!("t={ts},v1={}", hex::encode(m.finalize().into_bytes()));
    app.client
        .post(format!("{}/hooks/{id}", app.base))
        .header("content-type", "application/json")
        .header("stripe-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

const WEBHOOK_SECRET: &str = "whsec_keys_test_0123456789abcdef";

#[tokio::test]
async fn rotation_rewraps_every_credential_and_retires_the_old_key() {
    let app = spawn_app().await;
    let before = keys(&app).await;
    let old = before["active"].as_str().unwrap().to_string();
    assert_eq!(before["keys"][0]["state"], "active");
    assert_eq!(before["keys"][0]["held_here"], true);
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut body = stripe(&format!("Billing {i}"));
        body["config_params"] = json!([{ "key": "webhook_secret", "value": WEBHOOK_SECRET }]);
        ids.push(app.create(&body).await["id"].as_str().unwrap().to_string());
    }
    assert_eq!(keys(&app).await["keys"][0]["credentials"], 3);

    let (status, started) = rotate(&app, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let new = started["active"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let after = settled(&app).await;
    assert_eq!(after["active"], new.as_str());
    let state = |id: &str| {
        after["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(state(&old)["state"], "retired", "{after}");
    assert_eq!(state(&old)["credentials"], 0);
    assert_eq!(state(&new)["credentials"], 3);
    // Every secret still opens: deliveries verify with each webhook secret.
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            delivered(&app, id, &format!("evt_{i}")).await,
            StatusCode::OK
        );
    }
    // A retired key cannot come back, nor can the active key be rotated to.
    for (to, says) in [(&old, "retired"), (&new, "already active")] {
        let (status, problem) = rotate(&app, json!({ "to": to })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert!(problem.to_string().contains(says), "{problem}");
    }
    let (status, problem) = rotate(&app, json!({ "to": "kek_00000000000000ff" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_fields(&problem), vec!["to"]);
    assert!(
        problem.to_string().contains("does not hold key"),
        "{problem}"
    );
    let (status, problem) = rotate(&app, json!({ "to": 5 })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["code"], "invalid_body");
}

#[tokio::test]
async fn keys_from_the_environment_are_rotated_only_to_a_key_given_to_every_replica() {
    let key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([42u8; 32])
    };
    let app = spawn_app_configured(|c| {
        c.master_key = Some(secrecy::SecretString::from(key.clone()));
    })
    .await;
    let (status, problem) = rotate(&app, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("LATCHKEY_MASTER_KEY"),
        "{problem}"
    );
    assert!(keys(&app).await["rotation"].is_null(), "nothing changed");
}

#[tokio::test]
async fn data_from_before_key_rotation_is_taken_over_with_its_one_key() {
    if !on_sqlite() {
        eprintln!("SQLite-only: this test edits the database file itself");
        return;
    }
    let app = spawn_app().await;
    let old = keys(&app).await["active"].as_str().unwrap().to_string();
    let mut body = stripe("Before rotation existed");
    body["config_params"] = json!([{ "key": "webhook_secret", "value": WEBHOOK_SECRET }]);
    let id = app.create(&body).await["id"].as_str().unwrap().to_string();
    let token = app.token.clone();
    let dir = app.stop().await;
    // What an installation from before rotation holds: the key check and
    // fingerprint in `meta` only.
    let ring = crypto::KeyRing::read_file(&dir.path().join("master.key"))
        .unwrap()
        .unwrap();
    let db = rusqlite::Connection::open(dir.path().join("latchkey.db")).unwrap();
    db.execute("DELETE FROM master_keys", []).unwrap();
    db.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('kek_id', ?1), ('kek_check', ?2)",
        rusqlite::params![old.as_bytes(), ring.keys()[0].seal_key_check().unwrap()],
    )
    .unwrap();
    drop(db);
    let mut app = spawn_app_in(dir, None).await.map_err(|(e, _)| e).unwrap();
    app.token = token;
    let k = keys(&app).await;
    assert_eq!(k["active"], old.as_str());
    assert_eq!(k["keys"].as_array().unwrap().len(), 1, "{k}");
    assert_eq!(k["keys"][0]["credentials"], 1);
    assert_eq!(delivered(&app, &id, "evt_old").await, StatusCode::OK);
    let (status, _) = rotate(&app, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(settled(&app).await["keys"][1]["credentials"], 1);
    assert_eq!(delivered(&app, &id, "evt_new").await, StatusCode::OK);
}
