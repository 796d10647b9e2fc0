//! The catalog as the dialog reads it.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn the_catalog_lists_integrations_their_fields_and_fitting_services() {
    let app = spawn_app().await;
    let list: Value = app.get("/v1/integrations").await.json().await.unwrap();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert!(ids.len() >= 16, "{ids:?}");
    assert!(ids.contains(&"standard-webhooks"));
    let found: Value = app
        .get("/v1/integrations?q=twi")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"][0]["id"], "twilio");

    let twilio: Value = app
        .get("/v1/integrations/twilio")
        .await
        .json()
        .await
        .unwrap();
    let auth = &twilio["auth"][0];
    assert_eq!(auth["type"], "api_key");
    assert_eq!(
        auth["schema"]["required"],
        serde_json::json!(["api_key", "account_sid", "api_key_sid"])
    );
    assert_eq!(auth["schema"]["properties"]["api_key"]["writeOnly"], true);
    assert_eq!(auth["apply"]["kind"], "basic");
    assert_eq!(
        twilio["defaults"]["token_validation"],
        "twilio.account-check"
    );
    assert_eq!(app.get("/v1/integrations/nope").await.status(), 404);

    let services: Value = app
        .get("/v1/services?integration=twilio&role=webhook_event_verification")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = services["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"twilio.signature"), "{ids:?}");
    assert!(
        !ids.contains(&"stripe.signature"),
        "another integration's service does not fit"
    );
    assert!(services["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["role"] == "webhook_event_verification"));
    assert_eq!(app.get("/v1/services?role=nonsense").await.status(), 422);
    assert_eq!(
        app.get("/v1/services?integration=nonsense").await.status(),
        422
    );
}
