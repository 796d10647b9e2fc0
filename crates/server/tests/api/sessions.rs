//! Dashboard sessions over plain HTTP: sign-in with a management token, the
//! cookie's attributes, CSRF on every change, revocation and sign-out.

use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// The value of the `name=` cookie set by a response, and its attributes.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<(String, String)> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = pair.split_once('=')?;
            (k == name).then(|| (val.to_string(), attrs.to_string()))
        })
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in as the browser would and returns the session cookie and the page's CSRF token.
async fn sign_in(app: &TestApp, token: &str) -> (String, String) {
    let client = no_redirects();
    let form = client
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap();
    let (login_csrf, _) = set_cookie(&form, "lk_login").expect("the form sets its CSRF cookie");
    let page = form.text().await.unwrap();
    assert!(
        page.contains(&login_csrf),
        "the form carries the same token"
    );
    let res = client
        .post(format!("{}/login", app.base))
        .header(COOKIE, format!("lk_login={login_csrf}"))
        .form(&[("token", token), ("csrf", &login_csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/app/credentials");
    let (session, attrs) = set_cookie(&res, "lk_session").expect("a session cookie");
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("SameSite=Strict"),
        "{attrs}"
    );
    let page = client
        .get(format!("{}/app/credentials", app.base))
        .header(COOKIE, format!("lk_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    (session, csrf)
}

#[tokio::test]
async fn a_person_signs_in_and_changes_things_only_with_the_page_token() {
    let app = spawn_app().await;
    let (session, csrf) = sign_in(&app, &app.token).await;
    let with_cookie = |m: Method, path: &str| {
        app.client
            .request(m, format!("{}{path}", app.base))
            .header(COOKIE, format!("lk_session={session}"))
    };
    assert_eq!(
        with_cookie(Method::GET, "/v1/credentials")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A change without the CSRF header is refused, whatever else it carries.
    let res = with_cookie(Method::POST, "/v1/credentials")
        .json(&stripe("From a page"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "csrf");
    let res = with_cookie(Method::POST, "/v1/credentials")
        .header("x-csrf-token", "not-the-token")
        .json(&stripe("From a page"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = with_cookie(Method::POST, "/v1/credentials")
        .header("x-csrf-token", &csrf)
        .json(&stripe("From a page"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    // The credential's page reads it back with the cookie.
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let res = with_cookie(Method::GET, &format!("/v1/credentials/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["name"], "From a page");
    let audit: Value = app.get("/v1/audit").await.json().await.unwrap();
    assert_eq!(
        audit["items"][0]["actor_name"], "initial admin",
        "the session acts as its token"
    );

    // Sign-out ends the session.
    let res = no_redirects()
        .post(format!("{}/logout", app.base))
        .header(COOKIE, format!("lk_session={session}"))
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    for path in [
        "/v1/credentials".to_string(),
        format!("/v1/credentials/{id}"),
    ] {
        assert_eq!(
            with_cookie(Method::GET, &path)
                .send()
                .await
                .unwrap()
                .status(),
            401,
            "{path} after sign-out"
        );
    }
    let page = no_redirects()
        .get(format!("{}/app/credentials", app.base))
        .header(COOKIE, format!("lk_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        StatusCode::SEE_OTHER,
        "the page sends a signed-out person to sign in"
    );
}

#[tokio::test]
async fn a_session_ends_with_its_token_and_bad_sign_ins_say_why() {
    let app = spawn_app().await;
    let issued: Value = app
        .post(
            "/v1/tokens",
            &json!({ "name": "person", "role": "developer" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let token = issued["token"].as_str().unwrap();
    let (session, _) = sign_in(&app, token).await;
    let get = || {
        app.client
            .get(format!("{}/v1/credentials", app.base))
            .header(COOKIE, format!("lk_session={session}"))
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    let res = app
        .req(
            Method::DELETE,
            &format!("/v1/tokens/{}", issued["id"].as_str().unwrap()),
            &app.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        get().await.unwrap().status(),
        401,
        "revoking the token ends its sessions at once"
    );

    // A wrong token, or a form without its CSRF cookie, is refused with a reason.
    let client = no_redirects();
    let form = client
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap();
    let (login_csrf, _) = set_cookie(&form, "lk_login").unwrap();
    let res = client
        .post(format!("{}/login", app.base))
        .header(COOKIE, format!("lk_login={login_csrf}"))
        .form(&[("token", "lk_wrong"), ("csrf", login_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("unknown or has been revoked"));
    let res = client
        .post(format!("{}/login", app.base))
        .form(&[("token", app.token.as_str()), ("csrf", login_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "a cross-site form post has no login cookie"
    );
    assert!(set_cookie(&res, "lk_session").is_none());
}
