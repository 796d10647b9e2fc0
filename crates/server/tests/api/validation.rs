//! Token validation against a fake Twilio that the test starts on loopback:
//! a key it accepts, one it rejects, a provider that is down, slow, or
//! redirects, and the outbound policy that keeps keys away from other hosts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

const GOOD: &str = "goodgoodgoodgoodgoodgoodgoodGOOD";
const BAD: &str = "badbadbadbadbadbadbadbadbadbBADD";

/// A fake Twilio: answers the account resource when basic auth carries the
/// key it currently accepts; otherwise 401 with Twilio's error shape, which
/// (unkindly) quotes the key it was given.
async fn fake_twilio(accepted: Arc<Mutex<String>>) -> String {
    async fn account(State(accepted): State<Arc<Mutex<String>>>, headers: HeaderMap) -> Response {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let decoded = B64
            .decode(auth.trim_start_matches("Basic "))
            .unwrap_or_default();
        let decoded = String::from_utf8_lossy(&decoded).to_string();
        let (user, key) = decoded.split_once(':').unwrap_or(("", ""));
        if user.starts_with("SK") && key == accepted.lock().unwrap().as_str() {
            (
                AxumStatus::OK,
                axum::Json(json!({ "sid": "AC…", "status": "active" })),
            )
                .into_response()
        } else {
            let body = json!({ "code": 20003, "message": format!("Authentication Error - key {key} is not valid"), "status": 401 });
            (AxumStatus::UNAUTHORIZED, axum::Json(body)).into_response()
        }
    }
    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_secs(5)).await;
        "late"
    }
    async fn redirect() -> Response {
        (
            AxumStatus::FOUND,
            [("location", "http://169.254.169.254/latest/meta-data/")],
        )
            .into_response()
    }
    let router = axum::Router::new()
        .route("/2010-04-01/Accounts/{sid}", get(account))
        .route("/slow/2010-04-01/Accounts/{sid}", get(slow))
        .route("/redirect/2010-04-01/Accounts/{sid}", get(redirect))
        .with_state(accepted);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn twilio_at(name: &str, key: &str, base_url: &str) -> Value {
    let mut body = twilio(name, key);
    body.as_object_mut().unwrap().remove("validate");
    body["config_params"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "key": "base_url", "value": base_url }));
    body
}

#[tokio::test]
async fn saving_checks_the_key_with_the_provider() {
    let app = spawn_app().await;
    let provider = fake_twilio(Arc::new(Mutex::new(GOOD.into()))).await;

    let created = app.create(&twilio_at("Accepted", GOOD, &provider)).await;
    assert_eq!(created["status"], "valid");
    assert!(created["checked_at"].is_string());
    assert!(
        created["status_message"]
            .as_str()
            .unwrap()
            .contains("accepted"),
        "{}",
        created["status_message"]
    );

    let res = app
        .post("/v1/credentials", &twilio_at("Rejected", BAD, &provider))
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = res.text().await.unwrap();
    assert!(
        !text.contains(BAD),
        "the provider's echo of the key must not reach the client: {text}"
    );
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["code"], "token_rejected");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Authentication Error"),
        "the provider's reason: {problem}"
    );
    let list: Value = app
        .get("/v1/credentials?q=Rejected")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]), "a rejected key is not saved");

    // Saved unverified on request, without calling the provider.
    let mut unverified = twilio_at("Saved anyway", BAD, &provider);
    unverified["validate"] = json!(false);
    assert_eq!(app.create(&unverified).await["status"], "unverified");
}

#[tokio::test]
async fn an_unreachable_slow_or_redirecting_provider_gets_a_clear_error() {
    let app = spawn_app().await;
    let provider = fake_twilio(Arc::new(Mutex::new(GOOD.into()))).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    for (name, base, expect) in [
        ("Down", closed.clone(), "cannot connect"),
        ("Slow", format!("{provider}/slow"), "did not answer in time"),
        (
            "Redirecting",
            format!("{provider}/redirect"),
            "redirects are not followed",
        ),
    ] {
        let started = Instant::now();
        let res = app
            .post("/v1/credentials", &twilio_at(name, GOOD, &base))
            .await;
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY, "{name}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], "provider_unreachable", "{name}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(expect), "{name}: {detail}");
        assert!(
            detail.contains("\"validate\": false"),
            "says how to save anyway: {detail}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{name} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_check_on_demand_records_what_the_provider_says_now() {
    let app = spawn_app().await;
    let accepted = Arc::new(Mutex::new(GOOD.to_string()));
    let provider = fake_twilio(accepted.clone()).await;
    let created = app.create(&twilio_at("Rotating", GOOD, &provider)).await;
    let id = created["id"].as_str().unwrap();

    // The key is revoked at the provider: the next check says so.
    *accepted.lock().unwrap() = "somethingelsesomethingelse123456".into();
    let res = app
        .req(
            Method::POST,
            &format!("/v1/credentials/{id}/validate"),
            &app.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let checked: Value = res.json().await.unwrap();
    assert_eq!(checked["status"], "invalid");
    assert!(checked["status_message"]
        .as_str()
        .unwrap()
        .contains("Authentication Error"));
    assert!(!checked.to_string().contains(GOOD));
    assert_eq!(checked["version"], 1, "a check is not an edit");
    let audit: Value = app.get("/v1/audit").await.json().await.unwrap();
    assert_eq!(audit["items"][0]["action"], "credential.validate");

    // Rotating to a key the provider rejects is refused, and the old key stays.
    let res = app
        .req(Method::PATCH, &format!("/v1/credentials/{id}"), &app.token)
        .header("If-Match", "1")
        .json(&json!({ "api_key": BAD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let still: Value = app
        .get(&format!("/v1/credentials/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["version"], 1);
    assert_eq!(still["api_key"]["last4"], "GOOD");

    // Rotating to the key the provider now accepts makes it valid again.
    let res = app
        .req(Method::PATCH, &format!("/v1/credentials/{id}"), &app.token)
        .header("If-Match", "1")
        .json(&json!({ "api_key": "somethingelsesomethingelse123456" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await.unwrap();
    assert_eq!(rotated["status"], "valid");
    assert_eq!(rotated["version"], 2);

    let viewer = app.token_with_role("viewer").await;
    let res = app
        .req(
            Method::POST,
            &format!("/v1/credentials/{id}/validate"),
            &viewer,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn keys_go_only_to_hosts_the_integration_declares_or_the_operator_allows() {
    let app = spawn_app().await;
    for (base, why) in [
        ("https://example.com", "not a host Twilio declares"),
        ("http://10.0.0.1", "not a host"),
        ("http://169.254.169.254", "not a host"),
        ("http://localhost:9", "not a host"),
        ("http://api.twilio.com", "must be reached over https"),
    ] {
        let res = app
            .post("/v1/credentials", &twilio_at("Elsewhere", GOOD, base))
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{base}");
        let problem: Value = res.json().await.unwrap();
        let e = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["field"] == "config_params.base_url")
            .unwrap_or_else(|| panic!("{base}: {problem}"));
        assert_eq!(e["code"], "host_not_allowed");
        assert!(
            e["message"].as_str().unwrap().contains(why),
            "{base}: {}",
            e["message"]
        );
    }
    // A regional edge Twilio declares is fine (checked here without calling it).
    let mut edge = twilio_at("Dublin", GOOD, "https://api.dublin.ie1.twilio.com");
    edge["validate"] = json!(false);
    assert_eq!(app.create(&edge).await["status"], "unverified");
    // An integration that allows no override refuses the param outright.
    let mut gh = json!({ "name": "gh", "integration": "github", "api_key": format!("ghp_{}", "a".repeat(36)) });
    gh["config_params"] = json!([{ "key": "base_url", "value": "https://api.github.com" }]);
    let problem: Value = app.post("/v1/credentials", &gh).await.json().await.unwrap();
    assert_eq!(problem["errors"][0]["code"], "not_allowed");
}
