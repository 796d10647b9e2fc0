//! Deliveries to a credential's Webhook URL, scheme by scheme, as providers
//! send them: signed right, tampered, signed with the wrong secret, without
//! the header, too old, from the future, with an empty signature, repeated,
//! and the handshakes providers send first.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn hmac1(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Headers for a delivery of `body` at time `ts` to `url`, signed with `secret`.
type Signer = fn(secret: &str, body: &str, ts: i64, url: &str) -> Vec<(String, String)>;

/// One provider's way of signing, and a delivery it would send.
struct Scheme {
    integration: &'static str,
    api_key: &'static str,
    extra_params: Vec<Value>,
    secret: &'static str,
    content_type: &'static str,
    body: String,
    /// Whether the scheme carries a timestamp (and so a replay window).
    timed: bool,
    sign: Signer,
    /// The header whose value an empty signature replaces.
    signature_header: &'static str,
    empty_signature: &'static str,
    event_type: &'static str,
    app_user_id: Option<&'static str>,
    delivery_id: &'static str,
}

fn schemes() -> Vec<Scheme> {
    vec![
        Scheme {
            integration: "stripe",
            api_key: "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            extra_params: vec![],
            secret: "whsec_test_secret_0123456789abcdef",
            content_type: "application/json",
            body: json!({ "id": "evt_1", "type": "customer.created", "data": { "object": { "customer": "cus_9" } } }).to_string(),
            timed: true,
            sign: |secret, body, ts, _| {
                let sig = hex::encode(hmac256(secret.as_bytes(), &[ts.to_string().as_bytes(), b".", body.as_bytes()]));
                vec![("stripe-signature".into(), format!("t={ts},v1={sig},v0=deadbeef"))]
            },
            signature_header: "stripe-signature",
            empty_signature: "t=TS,v1=",
            event_type: "customer.created",
            app_user_id: Some("cus_9"),
            delivery_id: "evt_1",
        },
        Scheme {
            integration: "github",
            api_key: "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            extra_params: vec![],
            secret: "It's a Secret to Everybody",
            content_type: "application/json",
            body: json!({ "action": "opened", "sender": { "login": "octocat" } }).to_string(),
            timed: false,
            sign: |secret, body, _, _| {
                vec![
                    ("x-hub-signature-256".into(), format!("sha256={}", hex::encode(hmac256(secret.as_bytes(), &[body.as_bytes()])))),
                    ("x-github-event".into(), "issues".into()),
                    ("x-github-delivery".into(), "72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
                ]
            },
            signature_header: "x-hub-signature-256",
            empty_signature: "sha256=",
            event_type: "issues.opened",
            app_user_id: Some("octocat"),
            delivery_id: "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        },
        Scheme {
            integration: "slack",
            api_key: "xoxb-1234567890-abcdefghij",
            extra_params: vec![],
            secret: "8f742231b10e8888abcd99yyyzzz85a5",
            content_type: "application/json",
            body: json!({ "type": "event_callback", "event_id": "Ev01", "event": { "type": "message", "user": "U123" } }).to_string(),
            timed: true,
            sign: |secret, body, ts, _| {
                let sig = hex::encode(hmac256(secret.as_bytes(), &[format!("v0:{ts}:").as_bytes(), body.as_bytes()]));
                vec![
                    ("x-slack-signature".into(), format!("v0={sig}")),
                    ("x-slack-request-timestamp".into(), ts.to_string()),
                ]
            },
            signature_header: "x-slack-signature",
            empty_signature: "v0=",
            event_type: "message",
            app_user_id: Some("U123"),
            delivery_id: "Ev01",
        },
        Scheme {
            integration: "shopify",
            api_key: "shpat_0123456789abcdef0123456789abcdef",
            extra_params: vec![json!({ "key": "shop_domain", "value": "acme.myshopify.com" })],
            secret: "shopify_app_secret_0123456789",
            content_type: "application/json",
            body: json!({ "id": 820982911946154508u64, "email": "jon@example.com" }).to_string(),
            timed: false,
            sign: |secret, body, _, _| {
                vec![
                    ("x-shopify-hmac-sha256".into(), B64.encode(hmac256(secret.as_bytes(), &[body.as_bytes()]))),
                    ("x-shopify-topic".into(), "orders/create".into()),
                    ("x-shopify-shop-domain".into(), "acme.myshopify.com".into()),
                    ("x-shopify-webhook-id".into(), "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043".into()),
                ]
            },
            signature_header: "x-shopify-hmac-sha256",
            empty_signature: "",
            event_type: "orders/create",
            app_user_id: Some("acme.myshopify.com"),
            delivery_id: "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        },
        Scheme {
            integration: "standard-webhooks",
            api_key: "sw_api_key_0123456789",
            extra_params: vec![],
            secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            content_type: "application/json",
            body: json!({ "type": "invoice.paid", "data": { "id": "inv_1" } }).to_string(),
            timed: true,
            sign: |secret, body, ts, _| {
                let key = B64.decode(secret.trim_start_matches("whsec_")).unwrap();
                let id = "msg_2Lh9KRb0pzN4LePd3XiA4xc";
                let sig = B64.encode(hmac256(&key, &[format!("{id}.{ts}.").as_bytes(), body.as_bytes()]));
                vec![
                    ("webhook-id".into(), id.into()),
                    ("webhook-timestamp".into(), ts.to_string()),
                    ("webhook-signature".into(), format!("v1,{} v1,{sig}", B64.encode([0u8; 32]))),
                ]
            },
            signature_header: "webhook-signature",
            empty_signature: "v1,",
            event_type: "invoice.paid",
            app_user_id: None,
            delivery_id: "msg_2Lh9KRb0pzN4LePd3XiA4xc",
        },
        Scheme {
            integration: "twilio",
            api_key: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaWXYZ",
            extra_params: vec![
                json!({ "key": "account_sid", "value": format!("AC{}", "0123456789abcdef".repeat(2)) }),
                json!({ "key": "api_key_sid", "value": format!("SK{}", "fedcba9876543210".repeat(2)) }),
            ],
            secret: "12345678901234567890123456789012",
            content_type: "application/x-www-form-urlencoded",
            body: "MessageSid=SM1&Body=Hello&From=%2B15551234567&To=%2B18005551212".into(),
            timed: false,
            sign: |secret, body, _, url| {
                let mut fields: Vec<(String, String)> = serde_urlencoded::from_str(body).unwrap();
                fields.sort();
                let mut data = url.to_string();
                for (k, v) in fields {
                    data.push_str(&k);
                    data.push_str(&v);
                }
                vec![
                    ("x-twilio-signature".into(), B64.encode(hmac1(secret.as_bytes(), &[data.as_bytes()]))),
                    ("i-twilio-idempotency-token".into(), "idem-1".into()),
                ]
            },
            signature_header: "x-twilio-signature",
            empty_signature: "",
            event_type: "message.received",
            app_user_id: Some("+15551234567"),
            delivery_id: "idem-1",
        },
    ]
}

async fn credential_for(app: &TestApp, s: &Scheme, secret: Option<&str>) -> String {
    let mut params = s.extra_params.clone();
    if let Some(secret) = secret {
        params.push(json!({ "key": "webhook_secret", "value": secret }));
    }
    let body = json!({
        "name": format!("{} hooks {}", s.integration, secret.is_some()),
        "integration": s.integration,
        "api_key": s.api_key,
        "config_params": params,
        "validate": false,
    });
    app.create(&body).await["id"].as_str().unwrap().to_string()
}

async fn deliver(
    app: &TestApp,
    id: &str,
    content_type: &str,
    body: &str,
    headers: &[(String, String)],
) -> reqwest::Response {
    let mut req = app
        .client
        .post(format!("{}/hooks/{id}", app.base))
        .header("content-type", content_type)
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req.send().await.unwrap()
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

async fn expect_rejected(res: reqwest::Response, code: &str, what: &str) {
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(res.headers()["latchkey-rejection"], code, "{what}");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "signature_rejected", "{what}");
}

#[tokio::test]
async fn every_built_in_scheme_accepts_its_own_deliveries_and_refuses_the_rest() {
    let app = spawn_app().await;
    for s in schemes() {
        let who = s.integration;
        let id = credential_for(&app, &s, Some(s.secret)).await;
        let url = format!("{PUBLIC_URL}/hooks/{id}");
        let ts = now();

        // A good delivery is stored, in normal form, before the 2xx.
        let headers = (s.sign)(s.secret, &s.body, ts, &url);
        let res = deliver(&app, &id, s.content_type, &s.body, &headers).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{who}: {}",
            res.text().await.unwrap()
        );
        let events = events_of(&app, &id).await;
        assert_eq!(events.len(), 1, "{who}");
        let e = &events[0];
        assert_eq!(e["event_type"], s.event_type, "{who}");
        assert_eq!(e["app_user_id"], json!(s.app_user_id), "{who}");
        assert_eq!(
            e["user_id"],
            json!(s.app_user_id),
            "{who}: the identity mapper"
        );
        assert_eq!(e["delivery_id"], s.delivery_id, "{who}");
        assert_eq!(e["valid_request"], true);
        assert_eq!(e["kind"], "webhook");

        // The same delivery again: acknowledged, not stored twice.
        let res = deliver(&app, &id, s.content_type, &s.body, &headers).await;
        assert_eq!(res.status(), StatusCode::OK, "{who} duplicate");
        assert_eq!(res.json::<Value>().await.unwrap()["status"], "duplicate");
        assert_eq!(events_of(&app, &id).await.len(), 1, "{who}: stored once");

        // A tampered body.
        let tampered = s.body.replacen('e', "E", 1);
        expect_rejected(
            deliver(&app, &id, s.content_type, &tampered, &headers).await,
            "bad_signature",
            who,
        )
        .await;
        // Signed with another secret.
        let wrong_secret = match s.integration {
            "standard-webhooks" => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
            _ => format!("{}Z", s.secret),
        };
        let wrong = (s.sign)(&wrong_secret, &s.body, ts, &url);
        expect_rejected(
            deliver(&app, &id, s.content_type, &s.body, &wrong).await,
            "bad_signature",
            who,
        )
        .await;
        // Without the signature header.
        let missing: Vec<_> = headers
            .iter()
            .filter(|(k, _)| k != s.signature_header)
            .cloned()
            .collect();
        expect_rejected(
            deliver(&app, &id, s.content_type, &s.body, &missing).await,
            "missing_header",
            who,
        )
        .await;
        // An empty signature.
        let empty: Vec<_> = headers
            .iter()
            .map(|(k, v)| {
                if k == s.signature_header {
                    (k.clone(), s.empty_signature.replace("TS", &ts.to_string()))
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        let res = deliver(&app, &id, s.content_type, &s.body, &empty).await;
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "{who}: an empty signature"
        );

        if s.timed {
            let old = (s.sign)(s.secret, &s.body, ts - 3600, &url);
            expect_rejected(
                deliver(&app, &id, s.content_type, &s.body, &old).await,
                "stale_timestamp",
                who,
            )
            .await;
            let future = (s.sign)(s.secret, &s.body, ts + 3600, &url);
            expect_rejected(
                deliver(&app, &id, s.content_type, &s.body, &future).await,
                "future_timestamp",
                who,
            )
            .await;
        }
        assert_eq!(
            events_of(&app, &id).await.len(),
            1,
            "{who}: nothing refused was stored"
        );

        // The credential shows what its URL received.
        let view: Value = app
            .get(&format!("/v1/credentials/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(view["ingress"]["accepted"], 1, "{who}");
        assert_eq!(view["ingress"]["duplicates"], 1, "{who}");
        assert!(
            view["ingress"]["rejected"]["bad_signature"]
                .as_u64()
                .unwrap()
                >= 2,
            "{who}: {}",
            view["ingress"]
        );
    }
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("latchkey_ingress_total{"), "{metrics}");
    assert!(metrics.contains("outcome=\"rejected:bad_signature\""));
}

#[tokio::test]
async fn a_credential_without_a_webhook_secret_refuses_every_delivery() {
    let app = spawn_app().await;
    let s = &schemes()[0];
    let id = credential_for(&app, s, None).await;
    let headers = (s.sign)(s.secret, &s.body, now(), "");
    expect_rejected(
        deliver(&app, &id, s.content_type, &s.body, &headers).await,
        "no_secret",
        "no secret",
    )
    .await;
    assert!(events_of(&app, &id).await.is_empty());
}

#[tokio::test]
async fn slack_url_verification_is_answered_and_not_stored() {
    let app = spawn_app().await;
    let s = schemes()
        .into_iter()
        .find(|s| s.integration == "slack")
        .unwrap();
    let id = credential_for(&app, &s, Some(s.secret)).await;
    let body = json!({ "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification" }).to_string();
    let headers = (s.sign)(s.secret, &body, now(), "");
    let res = deliver(&app, &id, "application/json", &body, &headers).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.text().await.unwrap(),
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    assert!(
        events_of(&app, &id).await.is_empty(),
        "a handshake is not an event"
    );
    // An unsigned handshake is refused like any delivery.
    let res = deliver(&app, &id, "application/json", &body, &[]).await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn unknown_credentials_oversized_and_malformed_deliveries_get_clear_answers() {
    let app = spawn_app().await;
    let s = &schemes()[0];
    let id = credential_for(&app, s, Some(s.secret)).await;
    let res = deliver(
        &app,
        "cred_01jzzzzzzzzzzzzzzzzzzzzzzz",
        "application/json",
        "{}",
        &[],
    )
    .await;
    assert_eq!(res.status(), 404);
    let res = deliver(&app, "not-an-id", "application/json", "{}", &[]).await;
    assert_eq!(res.status(), 404);

    let big = "x".repeat(1024 * 1024 + 1);
    let res = deliver(&app, &id, "application/json", &big, &[]).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Signed right, but not JSON: refused as malformed, nothing stored.
    let body = "this is not json";
    let headers = (s.sign)(s.secret, body, now(), "");
    let res = deliver(&app, &id, "application/json", body, &headers).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "malformed_payload"
    );
    assert!(events_of(&app, &id).await.is_empty());

    // A deleted credential's URL is gone too.
    let res = app
        .req(
            reqwest::Method::DELETE,
            &format!("/v1/credentials/{id}"),
            &app.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let headers = (s.sign)(s.secret, &s.body, now(), "");
    assert_eq!(
        deliver(&app, &id, s.content_type, &s.body, &headers)
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn the_published_twilio_example_verifies_on_its_own_url() {
    // The vector's URL differs from ours, so sign our URL with the vector's
    // secret and parameters: the same computation Twilio documents.
    let app = spawn_app().await;
    let s = schemes()
        .into_iter()
        .find(|s| s.integration == "twilio")
        .unwrap();
    let id = credential_for(&app, &s, Some("12345678901234567890123456789012")).await;
    let url = format!("{PUBLIC_URL}/hooks/{id}?foo=1&bar=2");
    let body = "CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212&CallStatus=completed";
    let headers = (s.sign)("12345678901234567890123456789012", body, 0, &url);
    let res = app
        .client
        .post(format!("{}/hooks/{id}?foo=1&bar=2", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(&headers[0].0, &headers[0].1)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let events = events_of(&app, &id).await;
    assert_eq!(events[0]["event_type"], "call.completed");
    assert_eq!(events[0]["payload"]["Digits"], "1234");
}

#[tokio::test]
async fn slack_interactivity_arrives_on_the_action_url() {
    let app = spawn_app().await;
    let s = schemes()
        .into_iter()
        .find(|s| s.integration == "slack")
        .unwrap();
    let id = credential_for(&app, &s, Some(s.secret)).await;
    let payload = json!({
        "type": "block_actions",
        "user": { "id": "U0CA5" },
        "trigger_id": "13345224609.738474920.8088930838d88f008e0",
        "response_url": "https://hooks.slack.com/actions/T0/1/abc",
        "actions": [ { "action_id": "approve", "value": "req-42", "type": "button" } ],
    });
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    let headers = (s.sign)(s.secret, &body, now(), "");
    let mut req = app
        .client
        .post(format!("{}/actions/{id}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone());
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let v: Value = app
        .get(&format!("/v1/events?credential_id={id}&kind=action"))
        .await
        .json()
        .await
        .unwrap();
    let e = &v["items"][0];
    assert_eq!(e["event_type"], "block_actions");
    assert_eq!(e["app_user_id"], "U0CA5");
    assert_eq!(e["kind"], "action");
    let one: Value = app
        .get(&format!("/v1/events/{}", e["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], e["id"]);
    // Unsigned callbacks are refused on the Action URL too.
    let res = app
        .client
        .post(format!("{}/actions/{id}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn the_mapping_table_maps_app_users_and_counts_the_unmapped() {
    let app = spawn_app().await;
    let s = &schemes()[0];
    let body = json!({
        "name": "Stripe mapped",
        "integration": "stripe",
        "api_key": s.api_key,
        "services": { "user_id_mapper": "mapping-table" },
        "config_params": [ { "key": "webhook_secret", "value": s.secret } ],
        "validate": false,
    });
    let id = app.create(&body).await["id"].as_str().unwrap().to_string();
    let res = app
        .req(
            reqwest::Method::PUT,
            &format!("/v1/credentials/{id}/user-mappings/cus_9"),
            &app.token,
        )
        .json(&json!({ "user_id": "user-alice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let list: Value = app
        .get(&format!("/v1/credentials/{id}/user-mappings"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["user_id"], "user-alice");

    for (n, customer) in ["cus_9", "cus_unknown"].iter().enumerate() {
        let payload = json!({ "id": format!("evt_{n}"), "type": "charge.succeeded", "data": { "object": { "customer": customer } } }).to_string();
        let headers = (s.sign)(s.secret, &payload, now(), "");
        assert_eq!(
            deliver(&app, &id, "application/json", &payload, &headers)
                .await
                .status(),
            200
        );
    }
    let mapped: Value = app
        .get("/v1/events?user_id=user-alice")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mapped["items"].as_array().unwrap().len(), 1);
    let all = events_of(&app, &id).await;
    let unmapped = all
        .iter()
        .find(|e| e["app_user_id"] == "cus_unknown")
        .unwrap();
    assert_eq!(
        unmapped["user_id"],
        Value::Null,
        "an unmapped user is stored with no user id"
    );
    let view: Value = app
        .get(&format!("/v1/credentials/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["ingress"]["unmapped_users"], 1);

    // Another tenant cannot touch the mappings.
    let other: Value = app
        .post("/v1/tenants", &json!({ "name": "Other" }))
        .await
        .json()
        .await
        .unwrap();
    let other_token = other["admin_token"]["token"].as_str().unwrap();
    let res = app
        .req(
            reqwest::Method::GET,
            &format!("/v1/credentials/{id}/user-mappings"),
            other_token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = app
        .req(
            reqwest::Method::DELETE,
            &format!("/v1/credentials/{id}/user-mappings/cus_9"),
            &app.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}
