//! Rate limits: an address that keeps sending bad tokens or failed sign-ins
//! is refused with 429 and Retry-After, good token or not, while other
//! addresses are not; a flood of deliveries to one credential is cut off
//! with 429 while another credential keeps receiving.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn repeated_bad_tokens_and_sign_ins_from_one_address_get_429_with_retry_after() {
    let app = spawn_app_configured(|c| c.auth_failure_limit = 5).await;
    // Guesses count on every path, the read of one credential included
    // (it looks its token up with the credential).
    for (n, path) in [
        "/v1/credentials",
        "/v1/credentials/cred_x",
        "/v1/credentials/cred_x",
    ]
    .into_iter()
    .enumerate()
    {
        let res = app
            .req(Method::GET, path, &format!("lk_guess{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(
            problem["detail"], "The token is unknown or has been revoked.",
            "{path}"
        );
    }
    // A good token in between is fine, and does not reset the count.
    assert_eq!(app.get("/v1/credentials").await.status(), 200);
    // Failed dashboard sign-ins count too.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap();
    let csrf = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("lk_login="))
        .and_then(|v| v.split(';').next())
        .expect("the sign-in form's CSRF cookie")
        .to_string();
    let cookie = format!("lk_login={csrf}");
    for _ in 0..2 {
        let res = http
            .post(format!("{}/login", app.base))
            .header("cookie", &cookie)
            .form(&[("token", "lk_wrong"), ("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // Five failures: this address is refused now, even with the right token.
    for (path, token) in [
        ("/v1/credentials", "lk_guess9"),
        ("/v1/credentials", app.token.as_str()),
        ("/v1/credentials/cred_x", app.token.as_str()),
    ] {
        let res = app.req(Method::GET, path, token).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], "rate_limited");
    }
    let res = http
        .post(format!("{}/login", app.base))
        .header("cookie", &cookie)
        .form(&[("token", app.token.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    // Ingress is not behind a token: it keeps working for this address.
    let res = app
        .client
        .post(format!("{}/hooks/cred_nothing", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_flood_to_one_credential_does_not_starve_another() {
    let app = spawn_app_configured(|c| c.ingress_limit = 5).await;
    let flooded = app.create(&stripe("Flooded")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let quiet = app.create(&stripe("Quiet")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deliver = |id: String| {
        let (client, base) = (app.client.clone(), app.base.clone());
        async move {
            client
                .post(format!("{base}/hooks/{id}"))
                .header("content-type", "application/json")
                .body(json!({ "id": "evt_1", "type": "x" }).to_string())
                .send()
                .await
                .unwrap()
        }
    };
    let mut limited = 0;
    for _ in 0..200 {
        let res = deliver(flooded.clone()).await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            let wait: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(wait >= 1);
        } else {
            // Unsigned (no webhook secret): refused on its merits, not the limit.
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        }
    }
    assert!(
        limited >= 100,
        "the flood was cut off: {limited} of 200 limited"
    );
    for _ in 0..10 {
        let res = deliver(quiet.clone()).await;
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "the other credential is still served"
        );
    }
}
