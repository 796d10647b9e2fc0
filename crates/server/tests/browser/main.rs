//! Browser tests: the dashboard the server serves, driven in a real headless
//! Chromium through chromedriver, against the real server and a fake Twilio
//! on loopback. Screenshots land in `target/screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get
//! install chromium chromium-driver`). Without them the tests skip, unless
//! `CI` is set, where they fail.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod driver;

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use fantoccini::key::Key;
use fantoccini::Locator;
use serde_json::{json, Value};

use driver::{click_el, fill_el, Browser};
use helpers::*;

/// Keys the fake Twilio accepts and rejects (Twilio's format: 32 alphanumerics).
const GOOD: &str = "goodgoodgoodgoodgoodgoodgoodGOOD";
const BAD: &str = "badbadbadbadbadbadbadbadbadbBADD";

/// One browser at a time: the machine running these may be small.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn account_sid() -> String {
    format!("AC{}", "0123456789abcdef".repeat(2))
}

fn api_key_sid() -> String {
    format!("SK{}", "fedcba9876543210".repeat(2))
}

/// A fake Twilio: the account resource answers 200 when basic auth carries
/// GOOD as the password, and 401 with Twilio's error shape otherwise.
async fn fake_twilio() -> String {
    async fn account(headers: HeaderMap) -> Response {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let decoded = B64
            .decode(auth.trim_start_matches("Basic "))
            .unwrap_or_default();
        let decoded = String::from_utf8_lossy(&decoded).to_string();
        let (_, key) = decoded.split_once(':').unwrap_or(("", ""));
        if key == GOOD {
            let body = json!({ "sid": account_sid(), "status": "active" });
            (AxumStatus::OK, axum::Json(body)).into_response()
        } else {
            let body = json!({ "code": 20003, "message": "Authentication Error - invalid key", "status": 401 });
            (AxumStatus::UNAUTHORIZED, axum::Json(body)).into_response()
        }
    }
    let router = axum::Router::new().route("/2010-04-01/Accounts/{sid}", get(account));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Signs in on /login with `token` and waits for the credentials page.
async fn sign_in(b: &Browser, token: &str) {
    b.goto("/login").await;
    b.visible("form#login-form").await;
    b.fill("#token", token).await;
    b.click("#sign-in").await;
    b.eventually("the credentials page after signing in", || async {
        Ok((b.client.current_url().await?.path() == "/app/credentials").then_some(()))
    })
    .await;
    b.text_where("h1", "the App Credentials heading", |t| {
        t.trim() == "App Credentials"
    })
    .await;
}

/// Types `value` into the value of the config param row whose key is `key`.
async fn fill_param(b: &Browser, key: &str, value: &str) {
    b.eventually(
        &format!("the config param row {key:?}"),
        move || async move {
            for row in b
                .client
                .find_all(Locator::Css("#params div.param-row"))
                .await?
            {
                let k = row.find(Locator::Css("input.param-key")).await?;
                if k.prop("value").await?.as_deref() == Some(key) {
                    fill_el(&row.find(Locator::Css("input.param-value")).await?, value).await?;
                    return Ok(Some(()));
                }
            }
            Ok(None)
        },
    )
    .await
}

/// Clicks "Add Config Params" and fills the new (last) row.
async fn add_param(b: &Browser, key: &str, value: &str) {
    let rows = || async {
        b.client
            .find_all(Locator::Css("#params div.param-row"))
            .await
    };
    let before = rows().await.expect("the param rows").len();
    b.click("#add-param").await;
    b.eventually("a new config param row", || async {
        let all = rows().await?;
        if all.len() <= before {
            return Ok(None);
        }
        let row = all.last().unwrap();
        fill_el(&row.find(Locator::Css("input.param-key")).await?, key).await?;
        fill_el(&row.find(Locator::Css("input.param-value")).await?, value).await?;
        Ok(Some(()))
    })
    .await;
}

/// Opens the create dialog and fills step 1 for a Twilio API-key credential.
async fn create_step_1(b: &Browser, name: &str) {
    b.click("#create-credential").await;
    b.visible("dialog#credential-dialog").await;
    b.text_where("#dialog-title", "the Add Credentials title", |t| {
        t.trim() == "Add Credentials"
    })
    .await;
    b.visible("section#step-1").await;
    b.fill("#name", name).await;
    b.fill("#integration-filter", "twi").await;
    b.select("#integration", "twilio").await;
    b.value_is("#auth-type", "api_key").await;
}

/// Step 2 for Twilio: key, the messaging scope, the required params, and the
/// fake provider's address.
async fn create_step_2(b: &Browser, key: &str, provider: &str) {
    b.visible("section#step-2").await;
    b.fill("#api-key", key).await;
    let messaging = b
        .visible("#scopes input[name=scope][value=messaging]")
        .await;
    if messaging.prop("checked").await.unwrap().as_deref() != Some("true") {
        click_el(&messaging).await.unwrap();
    }
    fill_param(b, "account_sid", &account_sid()).await;
    fill_param(b, "api_key_sid", &api_key_sid()).await;
    add_param(b, "base_url", provider).await;
}

/// A Chrome DevTools command, sent through chromedriver's passthrough.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &reqwest::Url,
        session: Option<&str>,
    ) -> Result<reqwest::Url, <reqwest::Url as std::str::FromStr>::Err> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (axum::http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (axum::http::Method::POST, Some(body.to_string()))
    }
}

/// Downloads go to `dir` (rather than chromedriver's working directory).
async fn download_to(b: &Browser, dir: &std::path::Path) {
    let cmd = Cdp {
        cmd: "Browser.setDownloadBehavior",
        params: json!({ "behavior": "allow", "downloadPath": dir.display().to_string() }),
    };
    b.client
        .issue_cmd(cmd)
        .await
        .expect("set where downloads go");
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn assert_no_key(source: &str, when: &str) {
    assert!(
        !source.contains(GOOD),
        "the API key must never reach the page ({when})"
    );
}

/// The page's Content-Security-Policy must not allow inline scripts.
fn assert_csp(res: &reqwest::Response) {
    let csp = res
        .headers()
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{} has no Content-Security-Policy", res.url()))
        .to_str()
        .unwrap()
        .to_string();
    let directive = |name: &str| {
        csp.split(';')
            .map(str::trim)
            .find(|d| d.split_whitespace().next() == Some(name))
            .map(str::to_string)
    };
    let scripts = directive("script-src")
        .or_else(|| directive("default-src"))
        .unwrap_or_else(|| panic!("the CSP restricts scripts: {csp}"));
    assert!(
        !scripts.contains("'unsafe-inline'"),
        "no inline scripts in {}: {csp}",
        res.url()
    );
}

#[tokio::test]
async fn the_dashboard_journey() {
    let _one = ONE_BROWSER.lock().await;
    let app = spawn_app().await;
    let provider = fake_twilio().await;
    let Some(b) = Browser::launch(&app.base).await else {
        return;
    };

    // Sign in: a wrong token first, then the admin's.
    b.goto("/login").await;
    b.visible("form#login-form").await;
    b.text_where("label[for=token]", "the token label", |t| {
        t.contains("Management token")
    })
    .await;
    b.screenshot("01-sign-in.png").await;
    b.fill("#token", "lk_not_a_real_token").await;
    b.click("#sign-in").await;
    b.text_where("#login-error", "the sign-in error", |t| {
        !t.trim().is_empty()
    })
    .await;
    sign_in(&b, &app.token).await;
    b.visible("#empty-state").await;
    b.visible("#empty-create").await;
    b.eventually("the App Credentials nav link", || async {
        for a in b.client.find_all(Locator::Css("nav a")).await? {
            if a.text().await?.trim() == "App Credentials" {
                return Ok(Some(()));
            }
        }
        Ok(None)
    })
    .await;
    assert!(b.rows().await.unwrap().is_empty());
    b.screenshot("02-empty-dashboard.png").await;

    // The pages' CSP, fetched with the browser's session cookie.
    let cookies = b.client.get_all_cookies().await.unwrap();
    let cookie = cookies
        .iter()
        .map(|c| format!("{}={}", c.name(), c.value()))
        .collect::<Vec<_>>()
        .join("; ");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap();
    assert_csp(&login);
    let page = http
        .get(format!("{}/app/credentials", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the session cookie opens the dashboard");
    assert_csp(&page);

    // Create: step 1.
    create_step_1(&b, "Twilio prod").await;
    b.fill("#description", "SMS for the support team").await;
    b.value_is("#service-webhook_event_verification", "twilio.signature")
        .await;
    b.screenshot("03-dialog-step-1.png").await;
    // A name is required.
    b.fill("#name", "").await;
    b.click("#next").await;
    b.text_where(
        ".field-error[data-for=\"name\"]",
        "an error beside the name",
        |t| !t.trim().is_empty(),
    )
    .await;
    assert!(
        b.shown_now("section#step-1").await,
        "stays on step 1 without a name"
    );
    b.fill("#name", "Twilio prod").await;
    b.click("#next").await;

    // Step 2: the key is masked until shown.
    b.visible("section#step-2").await;
    b.hidden("section#step-1").await;
    assert_eq!(
        b.attr("#api-key", "type").await.as_deref(),
        Some("password")
    );
    create_step_2(&b, GOOD, &provider).await;
    b.click("#toggle-key").await;
    b.eventually("the key to be shown", || async {
        let t = b
            .client
            .find(Locator::Css("#api-key"))
            .await?
            .attr("type")
            .await?;
        Ok((t.as_deref() == Some("text")).then_some(()))
    })
    .await;
    b.click("#toggle-key").await;
    b.eventually("the key to be hidden again", || async {
        let t = b
            .client
            .find(Locator::Css("#api-key"))
            .await?
            .attr("type")
            .await?;
        Ok((t.as_deref() == Some("password")).then_some(()))
    })
    .await;
    b.screenshot("04-dialog-step-2.png").await;
    b.click("#save").await;

    // Saved, checked with the provider, and first in the list.
    b.hidden("dialog#credential-dialog").await;
    let rows = b
        .rows_where("the new credential first in the list", |r| {
            r.first().is_some_and(|r| r.name == "Twilio prod")
        })
        .await;
    let prod = rows[0].clone();
    assert_eq!(prod.status, "valid", "the provider accepted the key");
    assert!(prod.class.contains("just-added"), "{}", prod.class);
    b.toast("Twilio prod").await;
    b.hidden("#empty-state").await;
    assert_no_key(&b.source().await, "after saving");
    b.screenshot("05-dashboard-with-credential.png").await;

    // Search as you type, by credential name and by app name.
    b.fill("#search", "prod").await;
    b.rows_where("one row for \"prod\"", |r| {
        r.len() == 1 && r[0].name == "Twilio prod"
    })
    .await;
    b.fill("#search", "twilio").await;
    b.rows_where("the row for the app name \"twilio\"", |r| {
        r.iter().any(|r| r.name == "Twilio prod")
    })
    .await;
    b.fill("#search", "zzz").await;
    b.visible("#no-results").await;
    b.rows_where("no rows for \"zzz\"", |r| r.is_empty()).await;
    b.fill("#search", "").await;
    b.rows_where("the rows back", |r| r.len() == 1).await;
    b.hidden("#no-results").await;

    // View: the callback URLs, never the key.
    b.click_in_row("Twilio prod", ".view").await;
    b.visible("dialog#view-dialog").await;
    b.text_where("#view-title", "the view title", |t| {
        t.trim() == "Twilio prod"
    })
    .await;
    let webhook = b.text("#view-webhook-url").await;
    assert!(
        webhook.trim().ends_with(&format!("/hooks/{}", prod.id)),
        "{webhook}"
    );
    let action = b.text("#view-action-url").await;
    assert!(
        action.trim().ends_with(&format!("/actions/{}", prod.id)),
        "{action}"
    );
    b.visible("#view-dialog .copy").await;
    b.visible("#view-status").await;
    let scopes = b.text("#view-scopes").await;
    assert!(scopes.contains("messaging"), "{scopes}");
    let params = b.text("#view-params").await;
    assert!(params.contains("account_sid"), "{params}");
    assert_no_key(&b.source().await, "in the view dialog");
    b.screenshot("06-view.png").await;
    b.click("#view-close").await;
    b.hidden("dialog#view-dialog").await;

    // Edit: a new description; an empty key field keeps the key.
    b.click_in_row("Twilio prod", ".edit").await;
    b.visible("dialog#credential-dialog").await;
    b.text_where("#dialog-title", "the Edit Credential title", |t| {
        t.trim() == "Edit Credential"
    })
    .await;
    b.value_is("#name", "Twilio prod").await;
    b.fill("#description", "SMS for support and sales").await;
    assert_no_key(&b.source().await, "in the edit dialog");
    b.click("#next").await;
    b.visible("section#step-2").await;
    assert_eq!(b.value("#api-key").await, "", "the key is never sent back");
    assert_no_key(&b.source().await, "in the edit dialog, step 2");
    b.reset_toast().await;
    b.click("#save").await;
    b.hidden("dialog#credential-dialog").await;
    b.toast("Twilio prod").await;
    let saved: Value = app
        .get(&format!("/v1/credentials/{}", prod.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(saved["description"], "SMS for support and sales", "{saved}");
    assert_eq!(saved["version"], 2, "{saved}");
    assert_eq!(saved["api_key"]["set"], true, "the key was kept: {saved}");

    // A key the provider rejects: its reason, then "save unverified".
    create_step_1(&b, "Twilio bad").await;
    b.click("#next").await;
    create_step_2(&b, BAD, &provider).await;
    b.click("#save").await;
    b.text_where(
        "#save-error",
        "the provider's reason for rejecting the key",
        |t| t.contains("Authentication Error"),
    )
    .await;
    assert!(
        !b.source().await.contains(BAD),
        "the rejected key stays out of the page"
    );
    b.scroll_to("#save-error").await;
    b.screenshot("07-rejected-key.png").await;
    b.click("#save-unverified").await;
    b.hidden("dialog#credential-dialog").await;
    b.rows_where("the unverified credential", |r| {
        r.iter()
            .any(|r| r.name == "Twilio bad" && r.status == "unverified")
    })
    .await;

    // Test: checks the stored key with the provider again.
    b.reset_toast().await;
    b.click_in_row("Twilio prod", ".test").await;
    b.toast("valid").await;
    assert_eq!(b.row("Twilio prod").await.status, "valid");

    // Export: a file sealed with a passphrase typed twice, never the key.
    let downloads = tempfile::tempdir().expect("a downloads dir");
    download_to(&b, downloads.path()).await;
    b.hidden("#toast").await;
    b.click_in_row("Twilio prod", ".export").await;
    b.visible("dialog#export-dialog").await;
    b.text_where(
        "#export-title",
        "the export title naming the credential",
        |t| t.contains("Twilio prod"),
    )
    .await;
    b.eventually("the focus on the passphrase", || async {
        let id = b.client.active_element().await?.attr("id").await?;
        Ok((id.as_deref() == Some("export-passphrase")).then_some(()))
    })
    .await;
    assert!(
        !b.shown_now("#export-error").await,
        "no error before trying"
    );
    // Too short: refused before anything is sent.
    b.fill("#export-passphrase", "short").await;
    b.fill("#export-passphrase-again", "short").await;
    b.click("#export-confirm").await;
    b.text_where("#export-error", "an error for the short passphrase", |t| {
        !t.trim().is_empty()
    })
    .await;
    assert!(b.shown_now("dialog#export-dialog").await, "stays open");
    b.screenshot("09-export.png").await;
    let passphrase = "twenty-characters-ok";
    assert_eq!(passphrase.chars().count(), 20);
    b.fill("#export-passphrase", passphrase).await;
    b.fill("#export-passphrase-again", passphrase).await;
    b.click("#export-confirm").await;
    b.hidden("dialog#export-dialog").await;
    b.toast("Exported").await;
    b.eventually("the focus back on the row's Export button", || async {
        let label = b.client.active_element().await?.attr("aria-label").await?;
        Ok((label.as_deref() == Some("Export Twilio prod")).then_some(()))
    })
    .await;
    for input in ["#export-passphrase", "#export-passphrase-again"] {
        let value = b.client.find(Locator::Css(input)).await.unwrap();
        let value = value.prop("value").await.unwrap().unwrap_or_default();
        assert_eq!(value, "", "{input} is cleared");
    }
    assert_no_key(&b.source().await, "after exporting");
    let file = downloads.path().join(format!("latchkey-{}.lkx", prod.id));
    let sealed = b
        .eventually("the export file to be downloaded", || async {
            Ok(std::fs::read(&file).ok().filter(|bytes| !bytes.is_empty()))
        })
        .await;
    assert!(!contains(&sealed, GOOD), "the export is sealed");
    assert!(
        !contains(&sealed, passphrase),
        "the passphrase is not in it"
    );
    // Escape closes the dialog.
    b.click_in_row("Twilio prod", ".export").await;
    b.visible("dialog#export-dialog").await;
    b.press(Key::Escape).await;
    b.hidden("dialog#export-dialog").await;

    // Delete, after a confirmation naming the credential.
    b.click_in_row("Twilio bad", ".delete").await;
    b.visible("dialog#confirm-dialog").await;
    b.text_where(
        "#confirm-text",
        "the confirmation naming the credential",
        |t| t.contains("Twilio bad"),
    )
    .await;
    b.click("#confirm-yes").await;
    b.hidden("dialog#confirm-dialog").await;
    b.rows_where("the deleted row gone", |r| {
        r.len() == 1 && r[0].name == "Twilio prod"
    })
    .await;
    let gone = app
        .get("/v1/credentials?q=bad")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(gone["items"], json!([]), "deleted on the server too");

    // Keyboard: Escape closes the dialog.
    b.click("#create-credential").await;
    b.visible("dialog#credential-dialog").await;
    b.press(Key::Escape).await;
    b.hidden("dialog#credential-dialog").await;

    // Phone width: the create button is still there.
    b.client.set_window_size(390, 844).await.unwrap();
    b.visible("#create-credential").await;
    b.screenshot("08-phone-width.png").await;
    b.client.set_window_size(1280, 800).await.unwrap();

    // Sign out: the dashboard is closed to the old session.
    b.click("#sign-out").await;
    b.visible("form#login-form").await;
    let after = http
        .get(format!("{}/app/credentials", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_ne!(after.status(), 200, "the signed-out session is gone");

    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_credentials() {
    let _one = ONE_BROWSER.lock().await;
    let app = spawn_app().await;
    let res = app.post("/v1/tenants", &json!({ "name": "Acme" })).await;
    assert_eq!(res.status(), 201);
    let acme_token = res.json::<Value>().await.unwrap()["admin_token"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let operator = app
        .create(&twilio("Operator only SMS", &twilio_key('o')))
        .await;
    let id = operator["id"].as_str().unwrap().to_string();
    let Some(b) = Browser::launch(&app.base).await else {
        return;
    };

    sign_in(&b, &acme_token).await;
    b.visible("#empty-state").await;
    assert!(b.rows().await.unwrap().is_empty());
    let source = b.source().await;
    assert!(!source.contains("Operator only SMS"));
    assert!(!source.contains(&id));

    // Asking for the operator's credential by id from Acme's session.
    let fetched = b
        .client
        .execute_async(
            "const [id, done] = arguments;
             fetch('/v1/credentials/' + id, { credentials: 'same-origin' })
               .then(async r => done([r.status, await r.text()]))
               .catch(e => done([0, String(e)]));",
            vec![json!(id)],
        )
        .await
        .unwrap();
    let status = fetched[0].as_u64().unwrap();
    let body = fetched[1].as_str().unwrap_or_default();
    assert!(
        status == 404 || status == 401 || status == 403,
        "{status} {body}"
    );
    assert!(!body.contains("Operator only SMS"), "{body}");
    b.goto(&format!("/v1/credentials/{id}")).await;
    assert!(!b.source().await.contains("Operator only SMS"));
    let direct = app
        .req(
            reqwest::Method::GET,
            &format!("/v1/credentials/{id}"),
            &acme_token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 404);

    // Back on the dashboard, still nothing of the operator's.
    b.goto("/app/credentials").await;
    b.visible("#empty-state").await;
    b.fill("#search", "Operator").await;
    b.rows_where("no operator rows", |r| r.is_empty()).await;
    assert!(!b.source().await.contains("Operator only SMS"));

    // Import Credential: the operator's export, brought into Acme through
    // the dashboard; a wrong passphrase says so, a used name asks.
    let passphrase = "operator export passphrase";
    let exported = app
        .post(
            "/v1/credentials/export",
            &json!({ "passphrase": passphrase }),
        )
        .await
        .bytes()
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("operator.lkx");
    std::fs::write(&file, &exported).unwrap();
    b.fill("#search", "").await;
    let choose_file = || async {
        let input = b.client.find(Locator::Css("#import-file")).await.unwrap();
        input.send_keys(file.to_str().unwrap()).await.unwrap();
    };
    b.click("#import-credential").await;
    b.visible("dialog#import-dialog").await;
    choose_file().await;
    b.fill("#import-passphrase", "not the passphrase").await;
    b.click("#import-confirm").await;
    b.text_where("#import-error", "the wrong passphrase named", |t| {
        t.contains("passphrase is wrong")
    })
    .await;
    assert_eq!(
        b.attr("#import-passphrase", "aria-invalid")
            .await
            .as_deref(),
        Some("true")
    );
    b.fill("#import-passphrase", passphrase).await;
    b.click("#import-confirm").await;
    b.hidden("dialog#import-dialog").await;
    b.toast("Imported").await;
    b.rows_where("the imported credential listed", |r| {
        r.iter().any(|row| row.name == "Operator only SMS")
    })
    .await;
    assert!(
        !b.source().await.contains(&twilio_key('o')),
        "the imported key never reaches the page"
    );

    b.click("#import-credential").await;
    b.visible("dialog#import-dialog").await;
    choose_file().await;
    b.fill("#import-passphrase", passphrase).await;
    b.click("#import-confirm").await;
    b.text_where("#import-conflict-names", "the used name listed", |t| {
        t.contains("Operator only SMS")
    })
    .await;
    b.visible("#import-override").await;
    b.screenshot("10-import-conflict.png").await;
    b.click("#import-create-new").await;
    b.hidden("dialog#import-dialog").await;
    b.rows_where("both copies listed", |r| {
        r.iter()
            .any(|row| row.name == "Operator only SMS (imported)")
            && r.iter().any(|row| row.name == "Operator only SMS")
    })
    .await;

    b.close().await;
    app.stop().await;
}
