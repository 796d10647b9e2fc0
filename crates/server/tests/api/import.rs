//! Import Credential: an export from one tenant imported into another with
//! its secrets; names already used refused with the list, or overridden
//! (same id), or imported under new names; and every kind of bad file with
//! its own error, writing nothing.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::*;

const PASSPHRASE: &str = "a long and careful passphrase";

async fn import(
    app: &TestApp,
    token: &str,
    file: &[u8],
    passphrase: &str,
    on_conflict: Option<&str>,
) -> (StatusCode, Value) {
    let mut body = json!({ "file": B64.encode(file), "passphrase": passphrase });
    if let Some(c) = on_conflict {
        body["on_conflict"] = json!(c);
    }
    let res = app
        .req(Method::POST, "/v1/credentials/import", token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn list(app: &TestApp, token: &str) -> Vec<Value> {
    let v: Value = app
        .req(Method::GET, "/v1/credentials?limit=200", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["items"].as_array().unwrap().clone()
}

async fn export(app: &TestApp, token: &str) -> Vec<u8> {
    let res = app
        .req(Method::POST, "/v1/credentials/export", token)
        .json(&json!({ "passphrase": PASSPHRASE }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap().to_vec()
}

fn open(file: &[u8]) -> Value {
    let plain = crypto::export::open(&SecretString::from(PASSPHRASE.to_string()), file).unwrap();
    serde_json::from_slice(&plain).unwrap()
}

fn seal(content: &Value) -> Vec<u8> {
    let bytes = serde_json::to_vec(content).unwrap();
    crypto::export::seal(&SecretString::from(PASSPHRASE.to_string()), &bytes).unwrap()
}

#[tokio::test]
async fn an_export_imports_into_another_tenant_and_names_in_use_are_asked_about() {
    let app = spawn_app().await;
    let key = twilio_key('k');
    app.create(&twilio("Support SMS", &key)).await;
    let mut billing = stripe("Billing");
    billing["config_params"] =
        json!([{ "key": "webhook_secret", "value": "whsec_import_test_0123456789" }]);
    app.create(&billing).await;
    let file = export(&app, &app.token).await;

    let other: Value = app
        .post("/v1/tenants", &json!({ "name": "Other" }))
        .await
        .json()
        .await
        .unwrap();
    let b = other["admin_token"]["token"].as_str().unwrap().to_string();

    // Into an empty tenant: everything created, secrets included.
    let (status, done) = import(&app, &b, &file, PASSPHRASE, None).await;
    assert_eq!(status, StatusCode::CREATED, "{done}");
    let imported = done["imported"].as_array().unwrap();
    assert_eq!(imported.len(), 2);
    assert!(imported.iter().all(|i| i["action"] == "created"), "{done}");
    let in_b = list(&app, &b).await;
    let mut names: Vec<_> = in_b.iter().map(|c| c["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["Billing", "Support SMS"]);
    let sms = in_b.iter().find(|c| c["name"] == "Support SMS").unwrap();
    assert_eq!(sms["status"], "unverified");
    let again = open(&export(&app, &b).await);
    let values: Vec<String> = again["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["config_params"].as_array().unwrap().clone())
        .filter(|p| p["secret"] == true)
        .map(|p| p["value"].as_str().unwrap().to_string())
        .collect();
    assert!(
        values.contains(&key),
        "the key came across sealed and opens in the new tenant"
    );
    assert!(values.contains(&"whsec_import_test_0123456789".to_string()));

    // The same names again: asked, with the clashes, and nothing written.
    let (status, problem) = import(&app, &b, &file, PASSPHRASE, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "name_conflict");
    let clashes = problem["credentials"].as_array().unwrap();
    assert_eq!(clashes.len(), 2);
    assert!(clashes
        .iter()
        .any(|c| c["name"] == "Billing" && c["id"].as_str().unwrap().starts_with("cred_")));
    assert_eq!(list(&app, &b).await.len(), 2);

    // Create new: imported under free names.
    let (status, done) = import(&app, &b, &file, PASSPHRASE, Some("create_new")).await;
    assert_eq!(status, StatusCode::CREATED, "{done}");
    let mut renamed: Vec<_> = done["imported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    renamed.sort();
    assert_eq!(
        renamed,
        [
            ("Billing (imported)".to_string(), "renamed".to_string()),
            ("Support SMS (imported)".to_string(), "renamed".to_string())
        ]
    );
    let (_, done) = import(&app, &b, &file, PASSPHRASE, Some("create_new")).await;
    assert!(done.to_string().contains("Billing (imported 2)"), "{done}");
    assert_eq!(list(&app, &b).await.len(), 6);

    // Override: the same ids (and so the same URLs), a new version.
    let before = list(&app, &b).await;
    let billing_b = before
        .iter()
        .find(|c| c["name"] == "Billing")
        .unwrap()
        .clone();
    let (status, done) = import(&app, &b, &file, PASSPHRASE, Some("override")).await;
    assert_eq!(status, StatusCode::CREATED, "{done}");
    let replaced = done["imported"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "Billing")
        .unwrap()
        .clone();
    assert_eq!(replaced["action"], "replaced");
    assert_eq!(replaced["id"], billing_b["id"]);
    let after = list(&app, &b).await;
    assert_eq!(after.len(), 6);
    let billing_after = after.iter().find(|c| c["id"] == billing_b["id"]).unwrap();
    assert_eq!(
        billing_after["version"],
        billing_b["version"].as_i64().unwrap() + 1
    );

    let audit: Value = app
        .req(Method::GET, "/v1/audit", &b)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"][0]["action"], "credential.import");
    assert!(!audit.to_string().contains(&key) && !audit.to_string().contains(PASSPHRASE));

    let viewer = app.token_with_role("viewer").await;
    let (status, _) = import(&app, &viewer, &file, PASSPHRASE, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn every_kind_of_bad_file_gets_its_own_error_and_writes_nothing() {
    let app = spawn_app().await;
    app.create(&twilio("Support SMS", &twilio_key('k'))).await;
    let file = export(&app, &app.token).await;
    let other: Value = app
        .post("/v1/tenants", &json!({ "name": "Other" }))
        .await
        .json()
        .await
        .unwrap();
    let b = other["admin_token"]["token"].as_str().unwrap().to_string();

    let mut tampered = file.clone();
    let last = tampered.len() - 5;
    tampered[last] ^= 0x20;
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let other_kind = seal(&json!({ "kind": "latchkey.backup", "format": 1 }));
    let unknown_app = seal(&json!({
        "kind": "latchkey.credentials", "format": 1, "exported_at": "2026-11-26T00:00:00Z",
        "credentials": [{ "name": "Mystery", "description": "", "integration": "no-such-app",
            "auth_type": "api_key", "services": {}, "scopes": [], "config_params": [] }],
    }));
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "wrong passphrase",
            file.clone(),
            "not the passphrase at all",
            "wrong_passphrase",
        ),
        ("tampered", tampered, PASSPHRASE, "tampered"),
        (
            "truncated",
            file[..file.len() - 40].to_vec(),
            PASSPHRASE,
            "truncated",
        ),
        ("a picture", png, PASSPHRASE, "not_an_export"),
        (
            "a JSON file",
            b"{\"credentials\": []}".to_vec(),
            PASSPHRASE,
            "not_an_export",
        ),
        (
            "another kind of sealed file",
            other_kind,
            PASSPHRASE,
            "not_a_credential_export",
        ),
        (
            "an integration this server lacks",
            unknown_app,
            PASSPHRASE,
            "validation_failed",
        ),
    ];
    for (what, bytes, passphrase, code) in cases {
        let (status, problem) = import(&app, &b, &bytes, passphrase, Some("override")).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {problem}"
        );
        assert_eq!(problem["code"], code, "{what}: {problem}");
        assert!(
            !problem["detail"].as_str().unwrap_or("").is_empty(),
            "{what}: says what to do"
        );
        assert!(list(&app, &b).await.is_empty(), "{what}: nothing written");
    }
    let (status, problem) = import(&app, &b, b"", PASSPHRASE, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let res = app
        .req(Method::POST, "/v1/credentials/import", &b)
        .json(&json!({ "file": "%%% not base64", "passphrase": PASSPHRASE }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_fields(&res.json::<Value>().await.unwrap()), ["file"]);
    let audit: Value = app
        .req(Method::GET, "/v1/audit", &b)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !audit.to_string().contains("credential.import"),
        "no import happened"
    );
}
