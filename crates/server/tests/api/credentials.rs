//! The credential lifecycle through the API: create, view, list and search,
//! edit and rotate, delete; and every error a client can run into.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn a_credential_is_created_viewed_edited_rotated_and_deleted() {
    let app = spawn_app().await;
    let key = twilio_key('a');
    let res = app
        .post("/v1/credentials", &twilio("Twilio prod", &key))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["etag"], "\"1\"");
    let text = res.text().await.unwrap();
    assert!(!text.contains(&key), "the key came back in a response");
    let created: Value = serde_json::from_str(&text).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("cred_"));
    assert_eq!(created["api_key"], json!({ "set": true, "last4": "WXYZ" }));
    assert_eq!(created["status"], "unverified");
    assert_eq!(created["version"], 1);
    assert_eq!(created["integration_name"], "Twilio");
    assert_eq!(
        created["services"]["webhook_event_verification"],
        "twilio.signature"
    );
    assert_eq!(
        created["callback_urls"]["webhook_url"],
        format!("{PUBLIC_URL}/hooks/{id}")
    );
    assert_eq!(
        created["callback_urls"]["action_url"],
        format!("{PUBLIC_URL}/actions/{id}")
    );
    assert_eq!(created["callback_urls"]["authentication_url"], Value::Null);
    assert!(created["created_by"].as_str().unwrap().starts_with("tok_"));

    let fetched: Value = app
        .get(&format!("/v1/credentials/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["name"], "Twilio prod");
    let params = fetched["config_params"].as_array().unwrap();
    assert!(params
        .iter()
        .any(|p| p["key"] == "account_sid" && p["secret"] == false));

    // Edit the description with the current version.
    let res = app
        .req(Method::PATCH, &format!("/v1/credentials/{id}"), &app.token)
        .header("If-Match", "\"1\"")
        .json(&json!({ "description": "Alerts too" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let edited: Value = res.json().await.unwrap();
    assert_eq!(edited["description"], "Alerts too");
    assert_eq!(edited["version"], 2);
    assert_eq!(edited["api_key"]["last4"], "WXYZ", "an omitted key is kept");
    assert_eq!(
        edited["config_params"], fetched["config_params"],
        "omitted params are kept"
    );

    // A stale version is refused and says which version is current.
    let res = app
        .req(Method::PATCH, &format!("/v1/credentials/{id}"), &app.token)
        .header("If-Match", "\"1\"")
        .json(&json!({ "description": "lost update" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "version_mismatch");
    assert_eq!(problem["current_version"], 2);

    // Without If-Match the change is refused too.
    let res = app
        .req(Method::PATCH, &format!("/v1/credentials/{id}"), &app.token)
        .json(&json!({ "description": "blind" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_REQUIRED);

    // A new key rotates the secret.
    let new_key = format!("{}QRST", "b".repeat(28));
    let res = app
        .req(Method::PATCH, &format!("/v1/credentials/{id}"), &app.token)
        .header("If-Match", "2")
        .json(&json!({ "api_key": new_key, "validate": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let rotated: Value = res.json().await.unwrap();
    assert_eq!(rotated["api_key"]["last4"], "QRST");
    assert_eq!(rotated["version"], 3);

    let audit: Value = app.get("/v1/audit").await.json().await.unwrap();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..3],
        [
            "credential.rotate",
            "credential.update",
            "credential.create"
        ]
    );
    let audit_text = audit.to_string();
    assert!(
        !audit_text.contains(&key) && !audit_text.contains(&new_key),
        "a secret reached the audit log"
    );
    assert!(audit["items"][0]["source"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1"));

    let res = app
        .req(Method::DELETE, &format!("/v1/credentials/{id}"), &app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get(&format!("/v1/credentials/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    let res = app
        .req(Method::DELETE, &format!("/v1/credentials/{id}"), &app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // The SQLite file is read directly; the storage contract tests check PostgreSQL.
    if on_sqlite() {
        // Gone for good: no row, no sealed secret left behind.
        let db = rusqlite::Connection::open(app.db_path()).unwrap();
        let left: i64 = db
        .query_row(
            "SELECT (SELECT count(*) FROM credentials WHERE id = ?1) + (SELECT count(*) FROM credential_secrets WHERE credential_id = ?1)",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
        assert_eq!(left, 0);
    }
}

#[tokio::test]
async fn config_params_replace_the_set_and_a_secret_without_value_is_kept() {
    let app = spawn_app().await;
    let mut body = twilio("Twilio hooks", &twilio_key('c'));
    body["config_params"].as_array_mut().unwrap().push(json!({ "key": "webhook_secret", "value": "feedfacefeedfacefeedfacefeedface", "secret": false }));
    body["config_params"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "key": "region", "value": "ie1" }));
    let created = app.create(&body).await;
    let id = created["id"].as_str().unwrap();
    let ws = created["config_params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "webhook_secret")
        .unwrap()
        .clone();
    assert_eq!(
        ws["secret"], true,
        "a param the integration marks secret is secret whatever the request says"
    );
    assert_eq!(ws["value"], json!({ "set": true, "last4": "face" }));
    assert!(!created
        .to_string()
        .contains("feedfacefeedfacefeedfacefeedface"));

    let params = json!([
        { "key": "account_sid", "value": format!("AC{}", "0123456789abcdef".repeat(2)) },
        { "key": "api_key_sid", "value": format!("SK{}", "fedcba9876543210".repeat(2)) },
        { "key": "webhook_secret", "secret": true },
    ]);
    let res = app
        .req(Method::PATCH, &format!("/v1/credentials/{id}"), &app.token)
        .header("If-Match", "\"1\"")
        .json(&json!({ "config_params": params }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    let keys: Vec<&str> = updated["config_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["account_sid", "api_key_sid", "webhook_secret"],
        "region was dropped, the secret kept"
    );
    assert_eq!(updated["config_params"][2]["value"]["set"], true);
}

#[tokio::test]
async fn the_list_searches_by_credential_name_or_app_name_and_pages_stably() {
    let app = spawn_app().await;
    app.create(&twilio("Support SMS", &twilio_key('d'))).await;
    app.create(&twilio("Marketing texts", &twilio_key('e')))
        .await;
    app.create(&stripe("Billing")).await;
    for n in 0..4 {
        app.create(&stripe(&format!("Shop {n}"))).await;
    }

    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    let found: Value = app
        .get("/v1/credentials?q=support")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        names(&found),
        ["Support SMS"],
        "substring of the name, any case"
    );
    let found: Value = app
        .get("/v1/credentials?q=TWIL")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        found["items"].as_array().unwrap().len(),
        2,
        "by the app's name"
    );
    let found: Value = app.get("/v1/credentials?q=ms").await.json().await.unwrap();
    assert_eq!(names(&found), ["Support SMS"], "short queries work too");
    let found: Value = app
        .get("/v1/credentials?integration=stripe&status=unverified")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"].as_array().unwrap().len(), 5);
    let found: Value = app
        .get("/v1/credentials?q=nothing-like-this")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found, json!({ "items": [], "next_cursor": null }));
    // No name holds a NUL: a query with one is refused, saying which.
    let refused = app.get("/v1/credentials?q=sup%00port").await;
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "q");
    assert_eq!(problem["errors"][0]["code"], "invalid");
    // The integration filter must look like an id (PostgreSQL refused a
    // NUL in it, a 500); one the catalog lacks just matches nothing here.
    for bad in ["str%00ipe", ""] {
        let refused = app.get(&format!("/v1/credentials?integration={bad}")).await;
        assert_eq!(refused.status(), 422, "{bad:?}");
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "integration", "{bad:?}");
    }
    let found: Value = app
        .get("/v1/credentials?integration=retired_app")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found, json!({ "items": [], "next_cursor": null }));

    // Walk the whole list two at a time: every credential once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/credentials?limit=2&cursor={c}"),
            None => "/v1/credentials?limit=2".to_string(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.first().unwrap(), "Shop 3");
    let all: Value = app
        .get("/v1/credentials?limit=200")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&all), seen, "pages join to the same stable order");

    for bad in [
        "limit=0",
        "limit=201",
        "cursor=%%%",
        "status=broken",
        "auth_type=oauth2",
    ] {
        let res = app.get(&format!("/v1/credentials?{bad}")).await;
        assert!(
            res.status() == 400 || res.status() == 422,
            "{bad}: {}",
            res.status()
        );
        let problem: Value = res.json().await.unwrap();
        assert!(problem["code"].is_string(), "{bad}");
    }
    assert_eq!(
        app.get("/v1/credentials?colour=red").await.status(),
        400,
        "unknown query parameters are refused"
    );
}

#[tokio::test]
async fn every_problem_of_a_draft_is_reported_per_field() {
    let app = spawn_app().await;
    let body = json!({
        "name": "",
        "integration": "twilio",
        "auth_type": "api_key",
        "api_key": "short",
        "services": { "webhook_parser": "stripe.signature", "token_validation": "no-such-service" },
        "scopes": ["ok", "has space"],
        "config_params": [ { "key": "api_key_sid", "value": "nope" }, { "key": "base_url", "value": "https://evil.test" } ],
    });
    for path in ["/v1/credentials", "/v1/credentials/validate"] {
        let res = app.post(path, &body).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], "validation_failed");
        let fields = error_fields(&problem);
        for f in [
            "name",
            "api_key",
            "services.webhook_parser",
            "services.token_validation",
            "scopes[1]",
            "config_params.api_key_sid",
            "config_params.base_url",
            "config_params.account_sid",
        ] {
            assert!(
                fields.contains(&f.to_string()),
                "{path}: {f} missing from {fields:?}"
            );
        }
        assert!(
            !problem.to_string().contains("short\""),
            "the key's value is not echoed"
        );
    }
    // Nothing was stored.
    let list: Value = app.get("/v1/credentials").await.json().await.unwrap();
    assert_eq!(list["items"], json!([]));

    let res = app
        .post(
            "/v1/credentials/validate",
            &twilio("Fine", &twilio_key('f')),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({ "valid": true }));

    let mut other = twilio("x", &twilio_key('g'));
    other["integration"] = json!("nonexistent");
    let problem: Value = app
        .post("/v1/credentials", &other)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(problem["errors"][0]["field"], "integration");
    assert_eq!(problem["errors"][0]["code"], "unknown");
}

#[tokio::test]
async fn names_are_unique_per_tenant_and_the_clash_names_the_holder() {
    let app = spawn_app().await;
    let first = app.create(&stripe("Payments")).await;
    let res = app.post("/v1/credentials", &stripe("payments")).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "name_taken");
    assert_eq!(problem["existing_id"], first["id"]);
    // The draft check says so too, beside the name field.
    let problem: Value = app
        .post("/v1/credentials/validate", &stripe("PAYMENTS"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(problem["errors"][0]["field"], "name");
    assert_eq!(problem["errors"][0]["code"], "taken");
    // Renaming onto a taken name is refused as well.
    let second = app.create(&stripe("Refunds")).await;
    let res = app
        .req(
            Method::PATCH,
            &format!("/v1/credentials/{}", second["id"].as_str().unwrap()),
            &app.token,
        )
        .header("If-Match", "1")
        .json(&json!({ "name": "Payments" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn malformed_oversized_and_unknown_bodies_get_clear_problems() {
    let app = spawn_app().await;
    let send = |body: Vec<u8>| {
        app.req(Method::POST, "/v1/credentials", &app.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = send(b"{\"name\": ".to_vec()).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "malformed_json");

    let mut unknown = stripe("x");
    unknown["apikey"] = json!("sk_test_typo_in_field_name");
    let res = send(serde_json::to_vec(&unknown).unwrap()).await.unwrap();
    assert_eq!(res.status(), 400);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "apikey");
    assert_eq!(problem["errors"][0]["code"], "unknown_field");

    let mut wrong_type = stripe("x");
    wrong_type["scopes"] = json!("sk_live_leaked_in_the_wrong_field");
    let res = send(serde_json::to_vec(&wrong_type).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(
        !res.text().await.unwrap().contains("sk_live_leaked"),
        "a value was echoed in an error"
    );

    let mut big = stripe("big");
    big["description"] = json!("x".repeat(1024 * 1024 + 10));
    let res = send(serde_json::to_vec(&big).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "payload_too_large"
    );

    let res = app
        .req(Method::POST, "/v1/credentials", &app.token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        app.get("/v1/credentials/cred_doesnotexist").await.status(),
        404
    );
    assert_eq!(
        app.get("/v1/nowhere").await.json::<Value>().await.unwrap()["code"],
        "not_found"
    );
}

#[tokio::test]
async fn an_export_is_sealed_with_a_passphrase_and_carries_the_secrets() {
    let app = spawn_app().await;
    let key = twilio_key('x');
    let mut body = twilio("Exported", &key);
    body["config_params"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "key": "webhook_secret", "value": "abcdefabcdefabcdefabcdefabcdef12" }));
    let id = app.create(&body).await["id"].as_str().unwrap().to_string();
    app.create(&stripe("Also here")).await;

    let res = app
        .post(
            "/v1/credentials/export",
            &json!({ "passphrase": "short", "ids": [id] }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error_fields(&res.json::<Value>().await.unwrap()),
        ["passphrase"]
    );

    let passphrase = "a long and careful passphrase";
    let res = app
        .post(
            "/v1/credentials/export",
            &json!({ "passphrase": passphrase, "ids": [id] }),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains(".lkx"));
    let file = res.bytes().await.unwrap().to_vec();
    assert!(
        !file.windows(key.len()).any(|w| w == key.as_bytes()),
        "the key is sealed, not in the clear"
    );

    let opened =
        crypto::export::open(&secrecy::SecretString::from(passphrase.to_string()), &file).unwrap();
    let content: Value = serde_json::from_slice(&opened).unwrap();
    assert_eq!(content["kind"], "latchkey.credentials");
    let creds = content["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0]["name"], "Exported");
    assert!(
        creds[0].get("tenant_id").is_none() && !content.to_string().contains("ten_"),
        "tenant-neutral"
    );
    let param = |k: &str| {
        creds[0]["config_params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["key"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(param("api_key")["value"], key);
    assert_eq!(param("api_key")["secret"], true);
    assert_eq!(param("account_sid")["secret"], false);
    let wrong = crypto::export::open(
        &secrecy::SecretString::from("not the passphrase".to_string()),
        &file,
    );
    assert_eq!(
        wrong.unwrap_err(),
        crypto::export::ExportError::WrongPassphrase
    );

    // Without ids: every credential of the tenant.
    let all = app
        .post(
            "/v1/credentials/export",
            &json!({ "passphrase": passphrase }),
        )
        .await
        .bytes()
        .await
        .unwrap();
    let opened =
        crypto::export::open(&secrecy::SecretString::from(passphrase.to_string()), &all).unwrap();
    let content: Value = serde_json::from_slice(&opened).unwrap();
    assert_eq!(content["credentials"].as_array().unwrap().len(), 2);

    let audit: Value = app.get("/v1/audit").await.json().await.unwrap();
    assert_eq!(audit["items"][0]["action"], "credential.export");
    assert!(!audit.to_string().contains(&key) && !audit.to_string().contains(passphrase));

    let viewer = app.token_with_role("viewer").await;
    let res = app
        .req(Method::POST, "/v1/credentials/export", &viewer)
        .json(&json!({ "passphrase": passphrase }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let other: Value = app
        .post("/v1/tenants", &json!({ "name": "Other" }))
        .await
        .json()
        .await
        .unwrap();
    let res = app
        .req(
            Method::POST,
            "/v1/credentials/export",
            other["admin_token"]["token"].as_str().unwrap(),
        )
        .json(&json!({ "passphrase": passphrase, "ids": [id] }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "another tenant's credential cannot be exported"
    );
}
