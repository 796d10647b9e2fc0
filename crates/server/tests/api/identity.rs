//! Tokens, roles, tenants and the audit log.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn calls_without_a_live_token_are_refused() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/v1/credentials", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "unauthenticated"
    );
    for bad in ["lk_not-a-real-token", "garbage", ""] {
        let res = app
            .req(Method::GET, "/v1/credentials", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
    }
    let res = app
        .client
        .get(format!("{}/v1/credentials", app.base))
        .basic_auth("admin", Some("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tokens_are_shown_once_stored_as_hashes_and_revoked_at_once() {
    let app = spawn_app().await;
    let res = app
        .post("/v1/tokens", &json!({ "name": "ci", "role": "developer" }))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let issued: Value = res.json().await.unwrap();
    let token = issued["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("lk_") && token.len() >= 40);
    assert_eq!(
        app.req(Method::GET, "/v1/credentials", &token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let list: Value = app.get("/v1/tokens").await.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(
        !list.to_string().contains(&token),
        "a listed token shows no secret"
    );
    // The SQLite file is read directly; the storage contract tests check PostgreSQL.
    if on_sqlite() {
        let db = rusqlite::Connection::open(app.db_path()).unwrap();
        let stored: Vec<u8> = db
            .query_row(
                "SELECT hash FROM tokens WHERE id = ?1",
                [issued["id"].as_str().unwrap()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored.len(), 32);
        assert!(!String::from_utf8_lossy(&std::fs::read(app.db_path()).unwrap()).contains(&token));
    }

    let res = app
        .req(
            Method::DELETE,
            &format!("/v1/tokens/{}", issued["id"].as_str().unwrap()),
            &app.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.req(Method::GET, "/v1/credentials", &token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let res = app
        .req(
            Method::DELETE,
            &format!("/v1/tokens/{}", issued["id"].as_str().unwrap()),
            &app.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND, "revoking twice");

    let problem: Value = app
        .post("/v1/tokens", &json!({ "name": "", "role": "root" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(error_fields(&problem), ["name", "role"]);
}

#[tokio::test]
async fn a_viewer_reads_metadata_but_changes_nothing() {
    let app = spawn_app().await;
    let created = app.create(&stripe("Payments")).await;
    let id = created["id"].as_str().unwrap();
    let viewer = app.token_with_role("viewer").await;
    let developer = app.token_with_role("developer").await;

    assert_eq!(
        app.req(Method::GET, "/v1/credentials", &viewer)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let seen: Value = app
        .req(Method::GET, &format!("/v1/credentials/{id}"), &viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["api_key"]["set"], true);
    assert_eq!(
        app.req(Method::GET, "/v1/integrations", &viewer)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let forbidden = [
        app.req(Method::POST, "/v1/credentials", &viewer)
            .json(&stripe("Nope")),
        app.req(Method::POST, "/v1/credentials/validate", &viewer)
            .json(&stripe("Nope")),
        app.req(Method::PATCH, &format!("/v1/credentials/{id}"), &viewer)
            .header("If-Match", "1")
            .json(&json!({ "description": "x" })),
        app.req(Method::DELETE, &format!("/v1/credentials/{id}"), &viewer),
        app.req(Method::GET, "/v1/tokens", &viewer),
        app.req(Method::POST, "/v1/tokens", &viewer)
            .json(&json!({ "name": "x", "role": "admin" })),
        app.req(Method::GET, "/v1/audit", &viewer),
        app.req(Method::GET, "/v1/tokens", &developer),
        app.req(Method::GET, "/v1/audit", &developer),
    ];
    for req in forbidden {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(res.json::<Value>().await.unwrap()["code"], "forbidden");
    }
    // The developer manages credentials.
    let res = app
        .req(Method::POST, "/v1/credentials", &developer)
        .json(&stripe("Dev"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let still: Value = app
        .get(&format!("/v1/credentials/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        still["version"], 1,
        "nothing the viewer tried changed the credential"
    );
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let app = spawn_app().await;
    let mine = app.create(&stripe("Operator payments")).await;
    let id = mine["id"].as_str().unwrap();

    let res = app.post("/v1/tenants", &json!({ "name": "Acme" })).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let acme: Value = res.json().await.unwrap();
    let acme_token = acme["admin_token"]["token"].as_str().unwrap().to_string();
    assert_eq!(acme["admin_token"]["role"], "admin");
    assert_eq!(
        app.post("/v1/tenants", &json!({ "name": "acme" }))
            .await
            .status(),
        StatusCode::CONFLICT
    );

    let as_acme = |m: Method, path: String| app.req(m, &path, &acme_token);
    let list: Value = as_acme(Method::GET, "/v1/credentials".into())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
    for (m, path) in [
        (Method::GET, format!("/v1/credentials/{id}")),
        (Method::DELETE, format!("/v1/credentials/{id}")),
    ] {
        assert_eq!(
            as_acme(m, path).send().await.unwrap().status(),
            StatusCode::NOT_FOUND
        );
    }
    let res = as_acme(Method::PATCH, format!("/v1/credentials/{id}"))
        .header("If-Match", "1")
        .json(&json!({ "name": "mine now" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // The same name is free in another tenant; Acme's record is invisible to the operator.
    let res = as_acme(Method::POST, "/v1/credentials".into())
        .json(&stripe("Operator payments"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let theirs: Value = res.json().await.unwrap();
    assert_eq!(
        app.get(&format!(
            "/v1/credentials/{}",
            theirs["id"].as_str().unwrap()
        ))
        .await
        .status(),
        404
    );
    let ops: Value = app.get("/v1/credentials").await.json().await.unwrap();
    assert_eq!(ops["items"].as_array().unwrap().len(), 1);

    // Another tenant's tokens and audit are out of reach as well.
    let operator_tokens: Value = app.get("/v1/tokens").await.json().await.unwrap();
    let operator_token_id = operator_tokens["items"][0]["id"].as_str().unwrap();
    let res = as_acme(Method::DELETE, format!("/v1/tokens/{operator_token_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let audit: Value = as_acme(Method::GET, "/v1/audit".into())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["target_id"] != mine["id"]));

    // Only the operator's admins manage tenants.
    let res = as_acme(Method::POST, "/v1/tenants".into())
        .json(&json!({ "name": "Evil" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        as_acme(Method::GET, "/v1/tenants".into())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    let tenants: Value = app.get("/v1/tenants").await.json().await.unwrap();
    assert_eq!(tenants["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let res = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    app.stop().await;
}

/// A live token whose role this version does not know (one a newer version
/// wrote, say) is refused like an unknown one: 401 wherever it is sent,
/// the read of one credential (which looks the token up with it) included.
#[tokio::test]
async fn a_token_of_a_role_this_version_does_not_know_is_refused() {
    let app = spawn_app().await;
    let id = app.create(&stripe("Readable")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let issued: Value = app
        .post("/v1/tokens", &json!({ "name": "future", "role": "viewer" }))
        .await
        .json()
        .await
        .unwrap();
    let token = issued["token"].as_str().unwrap();
    let paths = [
        "/v1/credentials".to_string(),
        format!("/v1/credentials/{id}"),
    ];
    for path in &paths {
        let res = app.req(Method::GET, path, token).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path} as a viewer");
    }
    // An id no credential can have is 404 to a live token...
    let bad_id = "/v1/credentials/%00".to_string();
    let res = app.req(Method::GET, &bad_id, token).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    app.execute_sql(&format!(
        "UPDATE tokens SET role = 'auditor' WHERE id = '{}'",
        issued["id"].as_str().unwrap()
    ))
    .await;
    // ...and, like every other path, 401 to a refused one.
    for path in paths.iter().chain([&bad_id]) {
        let res = app.req(Method::GET, path, token).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], "unauthenticated", "{path}");
    }
}
