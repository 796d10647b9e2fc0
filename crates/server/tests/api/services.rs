//! A tenant's own services: declarative and scripted parsers, user id
//! mappers and signature verifiers, created over `/v1/services`, named by a
//! credential and used on its Webhook URL; changing and deleting them while
//! credentials use them; scripts that misbehave; roles, tenants and audit.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

const SECRET: &str = "whsec_services_test_0123456789abcdef";

fn hmac_hex(secret: &str, msg: &str) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(msg.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// The `Stripe-Signature` header Stripe would send for `body` now.
fn stripe_signed(body: &str) -> Vec<(String, String)> {
    let ts = chrono::Utc::now().timestamp();
    let sig = hmac_hex(SECRET, &format!("{ts}.{body}"));
    vec![("stripe-signature".into(), format!("t={ts},v1={sig}"))]
}

fn header(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn service(name: &str, role: &str, integrations: Value, spec: Value) -> Value {
    json!({
        "name": name,
        "role": role,
        "description": format!("{name}, made for the tests"),
        "integrations": integrations,
        "spec": spec,
    })
}

/// Creates a service as the admin and returns its JSON.
async fn create_service(app: &TestApp, body: &Value) -> Value {
    let res = app.post("/v1/services", body).await;
    let status = res.status();
    let json: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert!(json["id"].as_str().unwrap().starts_with("svc_"), "{json}");
    assert_eq!(json["builtin"], false);
    assert_eq!(json["version"], 1);
    json
}

/// A Stripe credential with a webhook secret and the given services.
fn stripe_using(name: &str, services: Value) -> Value {
    let mut body = stripe(name);
    body["services"] = services;
    body["config_params"] = json!([{ "key": "webhook_secret", "value": SECRET }]);
    body
}

async fn create_id(app: &TestApp, body: &Value) -> String {
    app.create(body).await["id"].as_str().unwrap().to_string()
}

async fn deliver(
    app: &TestApp,
    credential: &str,
    body: &str,
    headers: &[(String, String)],
) -> reqwest::Response {
    let mut req = app
        .client
        .post(format!("{}/hooks/{credential}", app.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req.send().await.unwrap()
}

async fn expect_ok(res: reqwest::Response, what: &str) {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{what}: {text}");
}

async fn events_of(app: &TestApp, credential: &str) -> Vec<Value> {
    let res = app
        .get(&format!("/v1/events?credential_id={credential}"))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    v["items"].as_array().unwrap().clone()
}

async fn list_ids(app: &TestApp, token: &str, query: &str) -> Vec<String> {
    let res = app
        .req(Method::GET, &format!("/v1/services{query}"), token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "GET /v1/services{query}");
    let v: Value = res.json().await.unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

async fn put_service(
    app: &TestApp,
    id: &str,
    query: &str,
    version: &str,
    body: &Value,
) -> reqwest::Response {
    app.req(
        Method::PUT,
        &format!("/v1/services/{id}{query}"),
        &app.token,
    )
    .header("If-Match", version)
    .json(body)
    .send()
    .await
    .unwrap()
}

async fn delete(app: &TestApp, path: &str) -> reqwest::Response {
    app.req(Method::DELETE, path, &app.token)
        .send()
        .await
        .unwrap()
}

fn kind_parser(event_type: &str) -> Value {
    service(
        "Kind parser",
        "webhook_parser",
        json!(["stripe"]),
        json!({
            "kind": "json_events",
            "event_type": event_type,
            "app_user_id": "$.who.id",
            "delivery_id": "header:X-Delivery",
        }),
    )
}

fn parser_script(name: &str, source: &str) -> Value {
    service(
        name,
        "webhook_parser",
        json!(["*"]),
        json!({ "kind": "script", "source": source }),
    )
}

#[tokio::test]
async fn a_declarative_parser_reads_the_fields_it_names_for_the_integrations_it_fits() {
    let app = spawn_app().await;
    let svc = create_service(&app, &kind_parser("$.kind")).await;
    let svc_id = svc["id"].as_str().unwrap();
    assert_eq!(svc["role"], "webhook_parser");
    assert_eq!(svc["integrations"], json!(["stripe"]));
    assert_eq!(svc["spec"]["kind"], "json_events");
    assert_eq!(svc["spec"]["event_type"], "$.kind");

    // It is fetched and listed where it fits, and only there.
    let one: Value = app
        .get(&format!("/v1/services/{svc_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], svc_id);
    assert_eq!(one["builtin"], false);
    let res = app
        .get("/v1/services?integration=stripe&role=webhook_parser")
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let listed: Value = res.json().await.unwrap();
    let items = listed["items"].as_array().unwrap();
    let mine = items.iter().find(|s| s["id"] == svc_id).expect("listed");
    assert_eq!(mine["builtin"], false);
    assert_eq!(mine["version"], 1);
    let builtin = items
        .iter()
        .find(|s| s["id"] == "stripe.webhook-parser")
        .expect("the built-in parser is listed too");
    assert_eq!(builtin["builtin"], true);
    assert!(items.iter().all(|s| s["role"] == "webhook_parser"));
    assert!(!list_ids(&app, &app.token, "?integration=github")
        .await
        .contains(&svc_id.to_string()));
    assert!(!list_ids(&app, &app.token, "?role=user_id_mapper")
        .await
        .contains(&svc_id.to_string()));

    // A GitHub credential cannot name a Stripe-only parser.
    let res = app
        .post(
            "/v1/credentials",
            &json!({
                "name": "GitHub with a Stripe parser",
                "integration": "github",
                "api_key": "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "services": { "webhook_parser": svc_id },
                "validate": false,
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = res.json().await.unwrap();
    assert!(
        error_fields(&problem).contains(&"services.webhook_parser".to_string()),
        "{problem}"
    );

    // A Stripe credential uses it on its Webhook URL.
    let cred = app
        .create(&stripe_using("Orders", json!({ "webhook_parser": svc_id })))
        .await;
    assert_eq!(cred["services"]["webhook_parser"], svc_id, "{cred}");
    let id = cred["id"].as_str().unwrap();
    let body = json!({ "kind": "order.paid", "who": { "id": "u-7" }, "total": 42 }).to_string();
    let mut headers = stripe_signed(&body);
    headers.push(header("X-Delivery", "dlv-0001"));
    expect_ok(deliver(&app, id, &body, &headers).await, "declarative").await;

    let events = events_of(&app, id).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["event_type"], "order.paid");
    assert_eq!(e["app_user_id"], "u-7");
    assert_eq!(e["delivery_id"], "dlv-0001");
    assert_eq!(e["user_id"], "u-7", "the default identity mapper");
    assert_eq!(e["payload"]["total"], 42);

    // The delivery id it names is what deduplicates.
    let res = deliver(&app, id, &body, &headers).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "duplicate");
    assert_eq!(events_of(&app, id).await.len(), 1);

    // A body without the event type it names is malformed, and not stored.
    let body = json!({ "who": { "id": "u-7" } }).to_string();
    let mut headers = stripe_signed(&body);
    headers.push(header("X-Delivery", "dlv-0002"));
    let res = deliver(&app, id, &body, &headers).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "malformed_payload"
    );
    assert_eq!(events_of(&app, id).await.len(), 1);
}

#[tokio::test]
async fn a_script_parser_builds_the_event_from_the_request() {
    let app = spawn_app().await;
    let svc = create_service(
        &app,
        &parser_script(
            "Script parser",
            r#"#{ event_type: "script." + request.json.type, app_user_id: request.headers["x-user"] }"#,
        ),
    )
    .await;
    let svc_id = svc["id"].as_str().unwrap();
    assert_eq!(svc["spec"]["kind"], "script");
    let id = create_id(
        &app,
        &stripe_using("Scripted", json!({ "webhook_parser": svc_id })),
    )
    .await;

    let body = json!({ "type": "invoice.paid", "data": { "amount": 1200 } }).to_string();
    let mut headers = stripe_signed(&body);
    headers.push(header("X-User", "acct-31"));
    expect_ok(deliver(&app, &id, &body, &headers).await, "script parser").await;

    let events = events_of(&app, &id).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["event_type"], "script.invoice.paid");
    assert_eq!(e["app_user_id"], "acct-31");
    assert_eq!(e["user_id"], "acct-31");
    assert_eq!(e["delivery_id"], Value::Null, "the script named none");
    assert_eq!(e["payload"]["data"]["amount"], 1200, "the body by default");
    assert_eq!(e["valid_request"], true);

    // Verification still comes first: an unsigned delivery never reaches the script.
    let res = deliver(&app, &id, &body, &[header("X-User", "acct-31")]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(events_of(&app, &id).await.len(), 1);
}

#[tokio::test]
async fn misbehaving_scripts_are_stopped_and_never_take_the_server_down() {
    let app = spawn_app().await;

    // A script that does not compile is refused when it is saved.
    let res = app
        .post(
            "/v1/services",
            &parser_script("Broken", "let = ; #{ event_type: "),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(error_fields(&problem), ["spec.source"], "{problem}");
    assert!(!list_ids(&app, &app.token, "?role=webhook_parser")
        .await
        .iter()
        .any(|id| id.starts_with("svc_")));

    let endless = create_service(&app, &parser_script("Endless", "loop {}")).await;
    let growing = create_service(
        &app,
        &parser_script("Growing", r#"let s = "x"; loop { s += s; }"#),
    )
    .await;
    let endless_cred = create_id(
        &app,
        &stripe_using("Endless", json!({ "webhook_parser": endless["id"] })),
    )
    .await;
    let growing_cred = create_id(
        &app,
        &stripe_using("Growing", json!({ "webhook_parser": growing["id"] })),
    )
    .await;
    let body = json!({ "id": "evt_loop", "type": "charge.succeeded" }).to_string();

    let started = Instant::now();
    let res = deliver(&app, &endless_cred, &body, &stripe_signed(&body)).await;
    let took = started.elapsed();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "malformed_payload", "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("operations") || detail.contains("longer than"),
        "the detail names the limit: {detail}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");

    let started = Instant::now();
    let res = deliver(&app, &growing_cred, &body, &stripe_signed(&body)).await;
    let took = started.elapsed();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "malformed_payload", "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    // The size limit stops it within microseconds; on a starved machine the
    // wall-time limit may come first, which is as good an answer.
    assert!(
        detail.contains("limit") || detail.contains("longer than"),
        "the detail names the limit: {detail}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");

    assert!(events_of(&app, &endless_cred).await.is_empty());
    assert!(events_of(&app, &growing_cred).await.is_empty());
    let view: Value = app
        .get(&format!("/v1/credentials/{endless_cred}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["ingress"]["rejected"]["malformed_payload"], 1,
        "{}",
        view["ingress"]
    );

    // The server is still there and still takes deliveries.
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let normal = create_id(&app, &stripe_using("Normal", json!({}))).await;
    let body = json!({ "id": "evt_ok", "type": "customer.updated", "data": { "object": { "customer": "cus_1" } } }).to_string();
    expect_ok(
        deliver(&app, &normal, &body, &stripe_signed(&body)).await,
        "after the runaway scripts",
    )
    .await;
    let events = events_of(&app, &normal).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "customer.updated");
    assert_eq!(events[0]["delivery_id"], "evt_ok");
}

#[tokio::test]
async fn a_payload_user_mapper_finds_the_platform_user_in_the_payload() {
    let app = spawn_app().await;
    let svc = create_service(
        &app,
        &service(
            "Metadata user",
            "user_id_mapper",
            json!(["stripe"]),
            json!({ "kind": "payload_user", "path": "$.data.object.metadata.user" }),
        ),
    )
    .await;
    let svc_id = svc["id"].as_str().unwrap();
    assert!(
        list_ids(&app, &app.token, "?integration=stripe&role=user_id_mapper")
            .await
            .contains(&svc_id.to_string())
    );
    // A mapper is not a parser.
    let res = app
        .post(
            "/v1/credentials",
            &stripe_using("Wrong role", json!({ "webhook_parser": svc_id })),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error_fields(&res.json::<Value>().await.unwrap()),
        ["services.webhook_parser"]
    );

    let id = create_id(
        &app,
        &stripe_using("Mapped", json!({ "user_id_mapper": svc_id })),
    )
    .await;
    let body = json!({
        "id": "evt_map_1",
        "type": "charge.succeeded",
        "data": { "object": { "customer": "cus_42", "metadata": { "user": "user-alice" } } },
    })
    .to_string();
    expect_ok(
        deliver(&app, &id, &body, &stripe_signed(&body)).await,
        "mapped",
    )
    .await;
    let events = events_of(&app, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["app_user_id"], "cus_42");
    assert_eq!(events[0]["user_id"], "user-alice");

    let by_user: Value = app
        .get("/v1/events?user_id=user-alice")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_user["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_user["items"][0]["delivery_id"], "evt_map_1");

    // A payload without the path is stored with no user, and counted.
    let body = json!({
        "id": "evt_map_2",
        "type": "charge.succeeded",
        "data": { "object": { "customer": "cus_43" } },
    })
    .to_string();
    expect_ok(
        deliver(&app, &id, &body, &stripe_signed(&body)).await,
        "unmapped",
    )
    .await;
    let events = events_of(&app, &id).await;
    let unmapped = events
        .iter()
        .find(|e| e["delivery_id"] == "evt_map_2")
        .unwrap();
    assert_eq!(unmapped["app_user_id"], "cus_43");
    assert_eq!(unmapped["user_id"], Value::Null);
    let view: Value = app
        .get(&format!("/v1/credentials/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["ingress"]["unmapped_users"], 1, "{}", view["ingress"]);
}

#[tokio::test]
async fn a_custom_hmac_verifier_accepts_its_signature_and_refuses_others() {
    let app = spawn_app().await;
    let svc = create_service(
        &app,
        &service(
            "X-Sig HMAC",
            "webhook_event_verification",
            json!(["stripe"]),
            json!({
                "kind": "hmac_signature",
                "algorithm": "sha256",
                "header": "X-Sig",
                "encoding": "hex",
                "prefix": "sha256=",
            }),
        ),
    )
    .await;
    let svc_id = svc["id"].as_str().unwrap();
    assert_eq!(svc["spec"]["content"], "{body}", "the default content");
    let id = create_id(
        &app,
        &stripe_using(
            "Custom signed",
            json!({ "webhook_event_verification": svc_id }),
        ),
    )
    .await;
    let body = json!({ "id": "evt_sig_1", "type": "payout.paid", "data": { "object": { "customer": "cus_5" } } }).to_string();

    let good = format!("sha256={}", hmac_hex(SECRET, &body));
    expect_ok(
        deliver(&app, &id, &body, &[header("X-Sig", &good)]).await,
        "signed with X-Sig",
    )
    .await;
    let events = events_of(&app, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "payout.paid");
    assert_eq!(events[0]["delivery_id"], "evt_sig_1");

    let other = json!({ "id": "evt_sig_2", "type": "payout.paid" }).to_string();
    for (what, headers) in [
        (
            "another secret",
            vec![header(
                "X-Sig",
                &format!("sha256={}", hmac_hex("whsec_wrong", &other)),
            )],
        ),
        ("another body's signature", vec![header("X-Sig", &good)]),
    ] {
        let res = deliver(&app, &id, &other, &headers).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            res.headers()["latchkey-rejection"],
            "bad_signature",
            "{what}"
        );
        assert_eq!(
            res.json::<Value>().await.unwrap()["code"],
            "signature_rejected",
            "{what}"
        );
    }
    // Stripe's own header means nothing to this credential now.
    let res = deliver(&app, &id, &other, &stripe_signed(&other)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["latchkey-rejection"], "missing_header");
    assert_eq!(
        events_of(&app, &id).await.len(),
        1,
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn a_service_in_use_is_changed_only_with_force_and_deleted_only_when_unused() {
    let app = spawn_app().await;
    let svc = create_service(&app, &kind_parser("$.kind")).await;
    let svc_id = svc["id"].as_str().unwrap().to_string();
    let cred = create_id(
        &app,
        &stripe_using("Uses the kind parser", json!({ "webhook_parser": svc_id })),
    )
    .await;
    let path = format!("/v1/services/{svc_id}");
    let changed = kind_parser("$.type");

    // In use: refused with the credentials that use it.
    let res = put_service(&app, &svc_id, "", "\"1\"", &changed).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "in_use", "{problem}");
    assert_eq!(
        problem["credentials"],
        json!([{ "id": cred, "name": "Uses the kind parser" }])
    );
    let unchanged: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(unchanged["version"], 1);
    assert_eq!(unchanged["spec"]["event_type"], "$.kind");

    // Without If-Match: told to send one.
    let res = app
        .req(Method::PUT, &format!("{path}?force=true"), &app.token)
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_REQUIRED);

    // With force it changes, and the credential uses the new spec at once.
    let res = put_service(&app, &svc_id, "?force=true", "\"1\"", &changed).await;
    assert_eq!(res.status(), StatusCode::OK);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["spec"]["event_type"], "$.type");
    let fetched: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(fetched["version"], 2);
    assert_eq!(fetched["spec"]["event_type"], "$.type");
    let body = json!({ "type": "by.type", "kind": "by.kind", "who": { "id": "u-1" } }).to_string();
    let mut headers = stripe_signed(&body);
    headers.push(header("X-Delivery", "dlv-after-change"));
    expect_ok(
        deliver(&app, &cred, &body, &headers).await,
        "after the change",
    )
    .await;
    let events = events_of(&app, &cred).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "by.type");

    // A stale version is refused, even with force.
    let res = put_service(&app, &svc_id, "?force=true", "\"1\"", &kind_parser("$.x")).await;
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["current_version"], 2, "{problem}");
    assert_eq!(
        app.get(&path).await.json::<Value>().await.unwrap()["version"],
        2
    );

    // The role cannot change.
    let mut as_mapper = kind_parser("$.type");
    as_mapper["role"] = json!("user_id_mapper");
    as_mapper["spec"] = json!({ "kind": "payload_user", "path": "$.who.id" });
    let res = put_service(&app, &svc_id, "?force=true", "\"2\"", &as_mapper).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_fields(&res.json::<Value>().await.unwrap()), ["role"]);

    // Deleting is refused while the credential uses it.
    let res = delete(&app, &path).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "in_use");
    assert_eq!(
        problem["credentials"],
        json!([{ "id": cred, "name": "Uses the kind parser" }])
    );
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);

    // Once the credential is gone, so can the service be.
    assert_eq!(
        delete(&app, &format!("/v1/credentials/{cred}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(delete(&app, &path).await.status(), StatusCode::NO_CONTENT);
    let res = app.get(&path).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "not_found");
    assert!(!list_ids(&app, &app.token, "").await.contains(&svc_id));
    assert_eq!(delete(&app, &path).await.status(), StatusCode::NOT_FOUND);

    // Built-in services are not the tenant's to change or delete.
    let builtin = app.get("/v1/services/stripe.signature").await;
    assert_eq!(builtin.status(), StatusCode::OK);
    let builtin: Value = builtin.json().await.unwrap();
    assert_eq!(builtin["builtin"], true);
    let replacement = service(
        "Stripe signature",
        "webhook_event_verification",
        json!(["stripe"]),
        json!({ "kind": "stripe_signature" }),
    );
    let res = put_service(&app, "stripe.signature", "", "\"1\"", &replacement).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "forbidden");
    let res = put_service(
        &app,
        "stripe.signature",
        "?force=true",
        "\"1\"",
        &replacement,
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        delete(&app, "/v1/services/stripe.signature").await.status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn viewers_read_services_and_other_tenants_never_see_them() {
    let app = spawn_app().await;
    let svc = create_service(&app, &kind_parser("$.kind")).await;
    let svc_id = svc["id"].as_str().unwrap().to_string();
    let path = format!("/v1/services/{svc_id}");

    // A viewer reads…
    let viewer = app.token_with_role("viewer").await;
    assert!(list_ids(&app, &viewer, "").await.contains(&svc_id));
    let res = app.req(Method::GET, &path, &viewer).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["id"], svc_id);
    // …and changes nothing.
    let forbidden = [
        app.req(Method::POST, "/v1/services", &viewer)
            .json(&parser_script("Viewer's", r#"#{ event_type: "x" }"#)),
        app.req(Method::PUT, &path, &viewer)
            .header("If-Match", "\"1\"")
            .json(&kind_parser("$.type")),
        app.req(Method::DELETE, &path, &viewer),
    ];
    for req in forbidden {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(res.json::<Value>().await.unwrap()["code"], "forbidden");
    }
    let all = list_ids(&app, &app.token, "").await;
    assert_eq!(all.iter().filter(|id| id.starts_with("svc_")).count(), 1);
    let still: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(still["version"], 1);

    // A developer may manage them.
    let developer = app.token_with_role("developer").await;
    let res = app
        .req(Method::POST, "/v1/services", &developer)
        .json(&parser_script("Developer's", r#"#{ event_type: "x" }"#))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);

    // Another tenant neither sees nor touches them.
    let res = app.post("/v1/tenants", &json!({ "name": "Globex" })).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let tenant: Value = res.json().await.unwrap();
    let other = tenant["admin_token"]["token"].as_str().unwrap().to_string();
    let theirs = list_ids(&app, &other, "").await;
    assert!(!theirs.contains(&svc_id));
    assert!(
        !theirs.iter().any(|id| id.starts_with("svc_")),
        "{theirs:?}"
    );
    assert!(
        !list_ids(&app, &other, "?integration=stripe&role=webhook_parser")
            .await
            .contains(&svc_id)
    );
    let as_other = |m: Method, p: &str| app.req(m, p, &other);
    let res = as_other(Method::GET, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = as_other(Method::PUT, &format!("{path}?force=true"))
        .header("If-Match", "\"1\"")
        .json(&kind_parser("$.type"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = as_other(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = as_other(Method::POST, "/v1/credentials")
        .json(&stripe_using(
            "Borrowing",
            json!({ "webhook_parser": svc_id }),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error_fields(&res.json::<Value>().await.unwrap()),
        ["services.webhook_parser"]
    );

    // Within a tenant a name is taken whatever its case; in another it is free.
    let mut clash = kind_parser("$.type");
    clash["name"] = json!("KIND PARSER");
    let res = app.post("/v1/services", &clash).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "conflict");
    let res = as_other(Method::POST, "/v1/services")
        .json(&kind_parser("$.kind"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let their_svc: Value = res.json().await.unwrap();
    assert_ne!(their_svc["id"], svc_id);
    assert_eq!(
        app.get(&format!(
            "/v1/services/{}",
            their_svc["id"].as_str().unwrap()
        ))
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
    let fetched: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(fetched["spec"]["event_type"], "$.kind");
    assert_eq!(fetched["version"], 1);
}

#[tokio::test]
async fn every_service_change_is_audited() {
    let app = spawn_app().await;
    let svc = create_service(&app, &kind_parser("$.kind")).await;
    let svc_id = svc["id"].as_str().unwrap().to_string();
    let res = put_service(&app, &svc_id, "", "\"1\"", &kind_parser("$.type")).await;
    assert_eq!(res.status(), StatusCode::OK, "unused: no force needed");
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 2);
    assert_eq!(
        delete(&app, &format!("/v1/services/{svc_id}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    let audit: Value = app.get("/v1/audit").await.json().await.unwrap();
    let entries: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["target_id"] == svc_id.as_str())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["service.delete", "service.update", "service.create"],
        "{audit}"
    );
    for a in &entries {
        assert_eq!(a["target_type"], "service");
        assert!(a["source"].as_str().unwrap().starts_with("127.0.0.1"));
    }
    assert_eq!(entries[2]["details"]["name"], "Kind parser");
    assert_eq!(entries[2]["details"]["role"], "webhook_parser");

    // Refused changes leave no trace.
    let res = app
        .post("/v1/services", &parser_script("Broken", "fn ("))
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let after: Value = app.get("/v1/audit").await.json().await.unwrap();
    assert_eq!(
        after["items"].as_array().unwrap().len(),
        audit["items"].as_array().unwrap().len()
    );
}
