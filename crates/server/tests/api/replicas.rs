//! Two replicas over one PostgreSQL schema and one master key: whatever one
//! writes, the other serves at once, with no restart. Credentials, webhook
//! deliveries and their de-duplication, key and webhook-secret rotations,
//! token revocation.

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

fn stripe_signature(secret: &str, body: &str) -> String {
    let ts = chrono::Utc::now().timestamp();
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(format!("{ts}.{body}").as_bytes());
    format!("t={ts},v1={}", hex::encode(m.finalize().into_bytes()))
}

async fn deliver(app: &TestApp, id: &str, body: &str, signature: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/hooks/{id}", app.base))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn events_of(app: &TestApp, id: &str) -> Vec<Value> {
    let v: Value = app
        .get(&format!("/v1/events?credential_id={id}"))
        .await
        .json()
        .await
        .unwrap();
    v["items"].as_array().unwrap().clone()
}

async fn credential(app: &TestApp, id: &str) -> Value {
    let res = app.get(&format!("/v1/credentials/{id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

fn stripe_event(id: &str) -> String {
    json!({
        "id": id,
        "object": "event",
        "type": "customer.created",
        "data": { "object": { "id": "cus_replica", "object": "customer" } },
    })
    .to_string()
}

#[tokio::test]
async fn two_replicas_over_one_schema_serve_each_others_writes_at_once() {
    if on_sqlite() {
        println!("replicas need PostgreSQL; run with LATCHKEY_TEST_BACKEND=postgres");
        return;
    }
    let a = spawn_app().await;
    let b = spawn_replica(&a).await;

    // A credential created through A is listed and fetched through B.
    let old_secret = "whsec_replica_old_0123456789abcdef";
    let created = a
        .create(&json!({
            "name": "Stripe on two replicas",
            "integration": "stripe",
            "api_key": "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "config_params": [ { "key": "webhook_secret", "value": old_secret } ],
            "validate": false,
        }))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let listed: Value = b.get("/v1/credentials").await.json().await.unwrap();
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str()),
        "B lists A's credential: {listed}"
    );
    let on_b = credential(&b, &id).await;
    assert_eq!(on_b["name"], "Stripe on two replicas");
    assert_eq!(on_b["api_key"]["last4"], "p7dc");

    // A delivery to B is stored and readable through A.
    let body = stripe_event("evt_replica_1");
    let sig = stripe_signature(old_secret, &body);
    let res = deliver(&b, &id, &body, &sig).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    let events = events_of(&a, &id).await;
    assert_eq!(events.len(), 1, "A reads what B stored: {events:?}");
    assert_eq!(events[0]["delivery_id"], "evt_replica_1");

    // The same delivery sent to A is a duplicate, stored once.
    let res = deliver(&a, &id, &body, &sig).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "duplicate");
    assert_eq!(events_of(&a, &id).await.len(), 1, "stored once (A)");
    assert_eq!(events_of(&b, &id).await.len(), 1, "stored once (B)");

    // A key rotation through A is what B shows.
    let version = credential(&a, &id).await["version"].as_i64().unwrap();
    let res = a
        .req(Method::PATCH, &format!("/v1/credentials/{id}"), &a.token)
        .header("If-Match", format!("\"{version}\""))
        .json(&json!({ "api_key": "sk_test_rotatedrotatedrotatedQRST", "validate": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    assert_eq!(credential(&b, &id).await["api_key"]["last4"], "QRST");

    // A webhook-secret change through A: B refuses the old secret and
    // accepts the new one.
    let new_secret = "whsec_replica_new_fedcba9876543210";
    let version = credential(&a, &id).await["version"].as_i64().unwrap();
    let res = a
        .req(Method::PATCH, &format!("/v1/credentials/{id}"), &a.token)
        .header("If-Match", format!("\"{version}\""))
        .json(&json!({
            "config_params": [ { "key": "webhook_secret", "value": new_secret } ],
            "validate": false,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    let body = stripe_event("evt_replica_2");
    let res = deliver(&b, &id, &body, &stripe_signature(old_secret, &body)).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "B still took the old secret"
    );
    assert_eq!(res.headers()["latchkey-rejection"], "bad_signature");
    let res = deliver(&b, &id, &body, &stripe_signature(new_secret, &body)).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    assert_eq!(events_of(&a, &id).await.len(), 2);
    // A last read the credential before the change (for the duplicate
    // above): it must not refuse the new secret for the old one it saw.
    let body = stripe_event("evt_replica_3");
    let res = deliver(&a, &id, &body, &stripe_signature(new_secret, &body)).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "A refused the new secret: {}",
        res.text().await.unwrap()
    );
    let body = stripe_event("evt_replica_4");
    let res = deliver(&a, &id, &body, &stripe_signature(old_secret, &body)).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "A took the old secret"
    );
    assert_eq!(events_of(&b, &id).await.len(), 3);

    // A token revoked through B stops working on A at once.
    let res = a
        .post(
            "/v1/tokens",
            &json!({ "name": "replicated", "role": "developer" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let issued: Value = res.json().await.unwrap();
    let token = issued["token"].as_str().unwrap();
    let status_on_a = |a: &TestApp| a.req(Method::GET, "/v1/credentials", token).send();
    assert_eq!(status_on_a(&a).await.unwrap().status(), StatusCode::OK);
    let res = b
        .req(
            Method::DELETE,
            &format!("/v1/tokens/{}", issued["id"].as_str().unwrap()),
            &b.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_on_a(&a).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "A still honours a token B revoked"
    );

    // A credential deleted through A takes no more deliveries on B, which
    // has handled deliveries to it.
    let res = a
        .req(Method::DELETE, &format!("/v1/credentials/{id}"), &a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let body = stripe_event("evt_replica_5");
    let res = deliver(&b, &id, &body, &stripe_signature(new_secret, &body)).await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "B took a delivery for a deleted credential"
    );

    b.stop().await;
    a.stop().await;
}
