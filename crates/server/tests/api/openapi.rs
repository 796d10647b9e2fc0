//! The OpenAPI document and the routes come from the same declarations; these
//! tests fail when they drift apart anyway.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::*;

const OPERATIONS: &[&str] = &[
    "DELETE /v1/credentials/{id}",
    "DELETE /v1/credentials/{id}/user-mappings/{app_user_id}",
    "DELETE /v1/services/{id}",
    "DELETE /v1/tokens/{id}",
    "GET /v1/audit",
    "GET /v1/credentials",
    "GET /v1/credentials/{id}",
    "GET /v1/credentials/{id}/user-mappings",
    "GET /v1/events",
    "GET /v1/events/{id}",
    "GET /v1/integrations",
    "GET /v1/integrations/{id}",
    "GET /v1/keys",
    "GET /v1/services",
    "GET /v1/services/{id}",
    "GET /v1/tenants",
    "GET /v1/tokens",
    "PATCH /v1/credentials/{id}",
    "POST /actions/{id}",
    "POST /hooks/{id}",
    "POST /v1/credentials",
    "POST /v1/credentials/export",
    "POST /v1/credentials/import",
    "POST /v1/credentials/validate",
    "POST /v1/credentials/{id}/validate",
    "POST /v1/keys/rotate",
    "POST /v1/services",
    "POST /v1/tenants",
    "POST /v1/tokens",
    "PUT /v1/credentials/{id}/user-mappings/{app_user_id}",
    "PUT /v1/services/{id}",
];

#[tokio::test]
async fn the_spec_is_openapi_3_1_and_lists_exactly_the_routes_that_answer() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/v1/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let spec: Value = res.json().await.unwrap();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec["openapi"]
    );
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());

    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                ops.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let expected: BTreeSet<String> = OPERATIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        ops, expected,
        "the spec's operations changed: update OPERATIONS if that was meant"
    );

    // Every documented operation is routed: whatever it answers, it is not a routing miss.
    for op in &ops {
        let (method, path) = op.split_once(' ').unwrap();
        let url = format!(
            "{}{}",
            app.base,
            path.replace("{id}", "x").replace("{app_user_id}", "u")
        );
        let res = app
            .client
            .request(method.parse().unwrap(), url)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{op} is documented but not routed");
        assert_ne!(
            body["detail"], "No such route.",
            "{op} is documented but not routed"
        );
        if path.starts_with("/v1/") {
            assert_eq!(status, 401, "{op} must require a token");
        } else {
            // The provider-facing URLs authenticate by signature: an unknown credential is 404.
            assert_eq!(status, 404, "{op}");
        }
    }
    // And a route that is not documented is not served.
    assert_eq!(
        app.client
            .get(format!("{}/v1/secrets", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// No stored text holds a NUL (PostgreSQL's text cannot), so an id or a
/// filter with one names nothing; PostgreSQL refuses such a parameter
/// outright, which must not surface as a 500. Every documented operation,
/// with a NUL in each path parameter, and every query parameter of every
/// GET, on a tenant that has a credential.
#[tokio::test]
async fn a_nul_in_any_path_parameter_or_query_parameter_is_refused_as_documented() {
    let app = spawn_app().await;
    let shop = app.create(&stripe("Shop")).await;
    let shop_id = shop["id"].as_str().unwrap();
    let spec: Value = app.get("/v1/openapi.json").await.json().await.unwrap();
    let mut tried = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                continue;
            }
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let mut urls = Vec::new();
            if path.contains('{') {
                urls.push((
                    path.replace("{id}", "cred%00x")
                        .replace("{app_user_id}", "u%00x"),
                    "404",
                ));
            }
            // Real records, so that the query is what is refused.
            let concrete = path.replace("{id}", shop_id).replace("{app_user_id}", "u");
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "query" {
                    let name = p["name"].as_str().unwrap();
                    // A number or a flag with a NUL is no number: the query's error.
                    let text = p["schema"]["type"].as_str().is_none_or(|t| t == "string")
                        || p["schema"]["type"]
                            .as_array()
                            .is_some_and(|ts| ts.contains(&"string".into()));
                    let expected = if text { "422" } else { "400" };
                    urls.push((format!("{concrete}?{name}=a%00b"), expected));
                }
            }
            for (url, expected) in urls {
                assert!(
                    !url.contains('{'),
                    "a path parameter was not filled in: {url}"
                );
                let res = app
                    .req(method.clone(), &url, &app.token)
                    .json(&serde_json::json!({}))
                    .send()
                    .await
                    .unwrap();
                let status = res.status();
                let body = res.text().await.unwrap_or_default();
                assert_eq!(status.as_str(), expected, "{method} {url}: {body}");
                assert!(
                    op["responses"].get(expected).is_some(),
                    "{method} {path} answers {expected} without documenting it"
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 30, "only {tried} requests were tried");
    // The refusal names each parameter, and only real ones.
    let refused = app
        .get("/v1/events?event_type=a%00b&kind=webhook&user_id=c%00d")
        .await;
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(error_fields(&problem), ["event_type", "user_id"]);
    let unknown = app.get("/v1/events?nonsense=a%00b").await;
    assert_eq!(
        unknown.status(),
        400,
        "an unknown parameter is the query's error"
    );
}
