//! The Webhook Parser, Action Callback Parser and (storage-free) User Id
//! Mapper roles: turning a verified request into Latchkey's normal form.
//!
//! This module owns the built-in parsers (Stripe, GitHub, Slack, Twilio,
//! Standard Webhooks), the declarative ones (`json_events`, `json_action`)
//! and value-expression evaluation ([`eval_expr`]); script services are
//! handed to [`crate::script`]. It must not verify signatures (the request
//! was verified before it gets here, so every successful built-in parse has
//! `valid_request: true`), touch storage (the mapping table is the server's)
//! or quote body values in its errors beyond what is needed.

use domain::spec::{JsonAction, JsonEvents, ServiceSpec};
use serde_json::{Map, Value};

use crate::script::{self, Limits, ScriptParsed};
use crate::{Inbound, NormalEvent};

/// Why a request could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body or a required header is not what the service expects (HTTP 400).
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A script service failed (limit hit, runtime error, bad return).
    #[error("{0}")]
    Script(String),
    #[error("this service cannot parse this kind of callback")]
    NotAParser,
}

/// What a webhook parser made of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookOutcome {
    Event(NormalEvent),
    /// Answer the provider's handshake with this body; no event.
    Handshake {
        content_type: String,
        body: String,
    },
}

/// An action callback in normal form.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionEvent {
    pub event: NormalEvent,
    pub action_id: Option<String>,
    pub value: Option<String>,
    pub response_url: Option<String>,
}

/// The Webhook Parser role.
pub fn parse_webhook(spec: &ServiceSpec, req: &Inbound) -> Result<WebhookOutcome, ParseError> {
    match spec {
        ServiceSpec::StripeEvents => stripe(req),
        ServiceSpec::GithubEvents => github(req),
        ServiceSpec::SlackEvents => slack(req),
        ServiceSpec::TwilioEvents => twilio(req),
        ServiceSpec::StandardWebhooksEvents { app_user_id } => {
            standard_webhooks(req, app_user_id.as_deref())
        }
        ServiceSpec::JsonEvents(spec) => json_events(spec, req),
        ServiceSpec::Script { source } => {
            let parsed = run_script(source, req)?;
            Ok(match parsed.handshake {
                Some(body) => text_handshake(body),
                None => WebhookOutcome::Event(NormalEvent {
                    valid_request: parsed.valid_request,
                    app_user_id: parsed.app_user_id,
                    event_type: parsed.event_type,
                    payload: parsed.payload,
                    delivery_id: parsed.delivery_id,
                }),
            })
        }
        _ => Err(ParseError::NotAParser),
    }
}

/// The Action Callback Parser role.
pub fn parse_action(spec: &ServiceSpec, req: &Inbound) -> Result<ActionEvent, ParseError> {
    match spec {
        ServiceSpec::SlackInteractivity => slack_interactivity(req),
        ServiceSpec::JsonAction(spec) => json_action(spec, req),
        ServiceSpec::Script { source } => {
            let parsed = run_script(source, req)?;
            if parsed.handshake.is_some() {
                return Err(ParseError::Script(
                    "script returned a handshake: action callbacks have none".into(),
                ));
            }
            Ok(ActionEvent {
                event: NormalEvent {
                    valid_request: parsed.valid_request,
                    app_user_id: parsed.app_user_id,
                    event_type: parsed.event_type,
                    payload: parsed.payload,
                    delivery_id: parsed.delivery_id,
                },
                action_id: parsed.action_id,
                value: parsed.value,
                response_url: parsed.response_url,
            })
        }
        _ => Err(ParseError::NotAParser),
    }
}

/// The User Id Mapper role, for the forms that need no storage.
///
/// `Identity` keeps the app user id; `PayloadUser` reads its expression
/// against the payload (`$.path`, `form:Field` as a payload field, or
/// `literal:text`; `header:`/`query:` have no request here and give `None`);
/// `MappingTable` is the server's ([`ParseError::NotAParser`]); `Script`
/// runs the script.
pub fn map_user(
    spec: &ServiceSpec,
    app_user_id: Option<&str>,
    payload: &Value,
) -> Result<Option<String>, ParseError> {
    match spec {
        ServiceSpec::Identity => Ok(app_user_id.map(str::to_string)),
        ServiceSpec::PayloadUser { path } => Ok(if path.starts_with('$') {
            json_path(path, payload)
        } else if let Some(field) = path.strip_prefix("form:") {
            payload.get(field).and_then(id_text)
        } else {
            path.strip_prefix("literal:").map(str::to_string)
        }
        .filter(|s| !s.is_empty())),
        ServiceSpec::Script { source } => {
            script::run_mapper(source, app_user_id, payload, Limits::default())
                .map_err(|e| ParseError::Script(e.to_string()))
        }
        _ => Err(ParseError::NotAParser),
    }
}

/// Evaluates a value expression (see [`domain::spec`]) against a request;
/// `json` is the body already parsed (or a form body as an object). A JSON
/// value that is not a string becomes its JSON text; `null`, a missing
/// value or an unknown expression give `None`.
pub fn eval_expr(expr: &str, req: &Inbound, json: &Value) -> Option<String> {
    if expr.starts_with('$') {
        return json_path(expr, json);
    }
    match expr.split_once(':')? {
        ("header", name) => req.header(name).map(str::to_string),
        ("form", field) => req
            .form()
            .into_iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v),
        ("query", name) => req.query(name),
        ("literal", text) => Some(text.to_string()),
        _ => None,
    }
}

/// `JsonPath::parse`, but an expression that ends inside a `\u` escape
/// (`\u` and fewer than four hex digits, then the end) is refused first:
/// serde_json_path 0.7.2 panics on it ("we do not use streaming parsers"),
/// as the `parse_webhook` fuzz target found, twice (`…\u`, then `…\uD`).
/// Such an expression is no valid path anyway: its string literal is not
/// closed.
pub(crate) fn parse_json_path(expr: &str) -> Option<serde_json_path::JsonPath> {
    if let Some(at) = expr.rfind("\\u") {
        let tail = &expr[at + 2..];
        if tail.len() < 4 && tail.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
    }
    serde_json_path::JsonPath::parse(expr).ok()
}

fn json_path(expr: &str, json: &Value) -> Option<String> {
    let path = parse_json_path(expr)?;
    match path.query(json).first()? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn run_script(source: &str, req: &Inbound) -> Result<ScriptParsed, ParseError> {
    script::run_parser(source, req, Limits::default())
        .map_err(|e| ParseError::Script(e.to_string()))
}

fn text_handshake(body: String) -> WebhookOutcome {
    WebhookOutcome::Handshake {
        content_type: "text/plain".into(),
        body,
    }
}

fn event(
    event_type: String,
    app_user_id: Option<String>,
    delivery_id: Option<String>,
    payload: Value,
) -> WebhookOutcome {
    WebhookOutcome::Event(NormalEvent {
        valid_request: true,
        app_user_id,
        event_type,
        payload,
        delivery_id,
    })
}

fn malformed(text: impl Into<String>) -> ParseError {
    ParseError::Malformed(text.into())
}

/// The request body as JSON: parsed JSON, or a form body as an object of
/// its fields (first value of a repeated field). Empty or neither: malformed.
fn body_payload(req: &Inbound) -> Result<Value, ParseError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Err(malformed("the body is empty"));
    }
    if req.is_form() {
        return Ok(form_object(req));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| malformed(format!("the body is neither JSON nor a form ({e})")))
}

fn form_object(req: &Inbound) -> Value {
    let mut fields = Map::new();
    for (k, v) in req.form() {
        fields.entry(k).or_insert(Value::String(v));
    }
    Value::Object(fields)
}

/// A non-empty string at a JSON pointer.
fn str_at(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An id at a JSON pointer: a non-empty string, or a number as its text.
fn id_at(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer).and_then(id_text)
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn header(req: &Inbound, name: &str) -> Option<String> {
    non_empty(req.header(name).map(|v| v.trim().to_string()))
}

/// Stripe: `type`; the connected `account`, else the customer; `id`.
fn stripe(req: &Inbound) -> Result<WebhookOutcome, ParseError> {
    let payload = body_payload(req)?;
    let event_type = str_at(&payload, "/type").ok_or_else(|| malformed("no string `type`"))?;
    let customer = || {
        id_at(&payload, "/data/object/customer")
            .or_else(|| id_at(&payload, "/data/object/customer/id"))
            .or_else(|| {
                // A customer.* event's object is the customer itself.
                (str_at(&payload, "/data/object/object").as_deref() == Some("customer"))
                    .then(|| id_at(&payload, "/data/object/id"))
                    .flatten()
            })
    };
    let app_user_id = id_at(&payload, "/account").or_else(customer);
    let delivery_id = id_at(&payload, "/id");
    Ok(event(event_type, app_user_id, delivery_id, payload))
}

/// GitHub: the `X-GitHub-Event` header plus `.action`; `sender.login`;
/// `X-GitHub-Delivery`. Accepts both JSON and form (`payload=`) deliveries.
fn github(req: &Inbound) -> Result<WebhookOutcome, ParseError> {
    let kind = header(req, "x-github-event")
        .ok_or_else(|| malformed("the X-GitHub-Event header is missing"))?;
    let payload = if req.is_form() {
        let field = req
            .form()
            .into_iter()
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v)
            .ok_or_else(|| malformed("the form has no `payload` field"))?;
        serde_json::from_str(&field)
            .map_err(|e| malformed(format!("the `payload` field is not JSON ({e})")))?
    } else {
        body_payload(req)?
    };
    let event_type = match str_at(&payload, "/action") {
        Some(action) => format!("{kind}.{action}"),
        None => kind,
    };
    let app_user_id = id_at(&payload, "/sender/login");
    Ok(event(
        event_type,
        app_user_id,
        header(req, "x-github-delivery"),
        payload,
    ))
}

/// Slack Events API: `url_verification` handshake; `event.type` (else the
/// top-level `type`); `event.user`; `event_id`.
fn slack(req: &Inbound) -> Result<WebhookOutcome, ParseError> {
    let payload = body_payload(req)?;
    if str_at(&payload, "/type").as_deref() == Some("url_verification") {
        let challenge = str_at(&payload, "/challenge")
            .ok_or_else(|| malformed("url_verification without a `challenge`"))?;
        return Ok(text_handshake(challenge));
    }
    let event_type = str_at(&payload, "/event/type")
        .or_else(|| str_at(&payload, "/type"))
        .ok_or_else(|| malformed("no string `event.type` or `type`"))?;
    // Usually an id; some events (user_change) carry the whole user object.
    let app_user_id = id_at(&payload, "/event/user").or_else(|| id_at(&payload, "/event/user/id"));
    let delivery_id = id_at(&payload, "/event_id");
    Ok(event(event_type, app_user_id, delivery_id, payload))
}

/// Twilio: messages (`message.received` or `message.<status>`), calls
/// (`call.<CallStatus>`) and recordings (`recording.<RecordingStatus>`);
/// `From`; the `I-Twilio-Idempotency-Token` header. The body is a form, or
/// a JSON object for the `bodySHA256` variant.
fn twilio(req: &Inbound) -> Result<WebhookOutcome, ParseError> {
    let empty = req.body.iter().all(u8::is_ascii_whitespace);
    let payload = if req.is_form() || empty {
        form_object(req)
    } else {
        match serde_json::from_slice::<Value>(&req.body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Err(malformed("the JSON body is not an object")),
            Err(e) => {
                return Err(malformed(format!(
                    "the body is neither a form nor JSON ({e})"
                )))
            }
        }
    };
    let field = |name: &str| payload.get(name).and_then(id_text);
    let message_status = field("MessageStatus").or_else(|| field("SmsStatus"));
    let is_message = message_status.is_some()
        || ["MessageSid", "SmsMessageSid", "SmsSid", "Body"]
            .iter()
            .any(|f| field(f).is_some());
    let event_type = if is_message {
        match message_status {
            Some(status) => format!("message.{status}"),
            None => "message.received".to_string(),
        }
    } else if let Some(status) = field("CallStatus") {
        format!("call.{status}")
    } else if let Some(status) = field("RecordingStatus") {
        format!("recording.{status}")
    } else {
        return Err(malformed(
            "not a Twilio message, call or recording callback (no MessageSid, Body, MessageStatus, CallStatus or RecordingStatus)",
        ));
    };
    Ok(event(
        event_type,
        field("From"),
        header(req, "i-twilio-idempotency-token"),
        payload,
    ))
}

/// Standard Webhooks: `type`; the configured app user expression;
/// the `webhook-id` header.
fn standard_webhooks(
    req: &Inbound,
    app_user_expr: Option<&str>,
) -> Result<WebhookOutcome, ParseError> {
    let payload = body_payload(req)?;
    let event_type = str_at(&payload, "/type").ok_or_else(|| malformed("no string `type`"))?;
    let app_user_id = app_user_expr.and_then(|e| non_empty(eval_expr(e, req, &payload)));
    Ok(event(
        event_type,
        app_user_id,
        header(req, "webhook-id"),
        payload,
    ))
}

/// Declarative webhook parser. The handshake is looked at first, even when
/// the body is not JSON (some providers validate with an empty body).
fn json_events(spec: &JsonEvents, req: &Inbound) -> Result<WebhookOutcome, ParseError> {
    let payload = body_payload(req);
    if let Some(h) = &spec.handshake {
        let json = payload.as_ref().unwrap_or(&Value::Null);
        let applies = match (&h.when, &h.equals) {
            (Some(when), Some(equals)) => eval_expr(when, req, json).as_ref() == Some(equals),
            (Some(when), None) => non_empty(eval_expr(when, req, json)).is_some(),
            (None, _) => true,
        };
        if applies {
            if let Some(echo) = non_empty(eval_expr(&h.echo, req, json)) {
                return Ok(text_handshake(echo));
            }
        }
    }
    let payload = payload?;
    let event_type = non_empty(eval_expr(&spec.event_type, req, &payload))
        .ok_or_else(|| malformed(format!("no event type at `{}`", spec.event_type)))?;
    let eval = |e: &Option<String>| {
        e.as_deref()
            .and_then(|e| non_empty(eval_expr(e, req, &payload)))
    };
    let app_user_id = eval(&spec.app_user_id);
    let delivery_id = eval(&spec.delivery_id);
    Ok(event(event_type, app_user_id, delivery_id, payload))
}

/// Slack interactivity: the `payload` form field holds the JSON.
fn slack_interactivity(req: &Inbound) -> Result<ActionEvent, ParseError> {
    let field = req
        .form()
        .into_iter()
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v)
        .ok_or_else(|| malformed("the form has no `payload` field"))?;
    let inner: Value = serde_json::from_str(&field)
        .map_err(|e| malformed(format!("the `payload` field is not JSON ({e})")))?;
    let event_type = str_at(&inner, "/type").ok_or_else(|| malformed("no string `type`"))?;
    let first = inner.pointer("/actions/0");
    // Shortcuts and modal submissions have no actions: their callback id names them.
    let action_id = first
        .and_then(|a| id_at(a, "/action_id"))
        .or_else(|| id_at(&inner, "/callback_id"))
        .or_else(|| id_at(&inner, "/view/callback_id"));
    let value = first.and_then(|a| {
        [
            "/value",
            "/selected_option/value",
            "/selected_user",
            "/selected_channel",
            "/selected_conversation",
            "/selected_date",
            "/selected_time",
            "/selected_date_time",
        ]
        .iter()
        .find_map(|p| id_at(a, p))
    });
    let response_url =
        id_at(&inner, "/response_url").or_else(|| id_at(&inner, "/response_urls/0/response_url"));
    Ok(ActionEvent {
        event: NormalEvent {
            valid_request: true,
            app_user_id: id_at(&inner, "/user/id"),
            event_type,
            delivery_id: id_at(&inner, "/trigger_id"),
            payload: inner,
        },
        action_id,
        value,
        response_url,
    })
}

/// Declarative action callback parser.
fn json_action(spec: &JsonAction, req: &Inbound) -> Result<ActionEvent, ParseError> {
    let payload = body_payload(req)?;
    let eval = |e: &Option<String>| {
        e.as_deref()
            .and_then(|e| non_empty(eval_expr(e, req, &payload)))
    };
    let event_type = non_empty(eval_expr(&spec.action_type, req, &payload))
        .ok_or_else(|| malformed(format!("no action type at `{}`", spec.action_type)))?;
    let app_user_id = eval(&spec.app_user_id);
    let delivery_id = eval(&spec.delivery_id);
    let action_id = eval(&spec.action_id);
    let value = eval(&spec.value);
    let response_url = eval(&spec.response_url);
    Ok(ActionEvent {
        event: NormalEvent {
            valid_request: true,
            app_user_id,
            event_type,
            payload,
            delivery_id,
        },
        action_id,
        value,
        response_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::spec::Handshake;
    use serde_json::json;

    const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
    const JSON: (&str, &str) = ("content-type", "application/json");

    fn req(url: &str, headers: &[(&str, &str)], body: &str) -> Inbound {
        Inbound {
            method: "POST".into(),
            url: format!("https://latchkey.example/hooks/cred_1{url}"),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            now: 1_700_000_000,
        }
    }

    fn form_body(fields: &[(&str, &str)]) -> String {
        serde_urlencoded::to_string(fields).unwrap()
    }

    fn webhook_event(spec: &ServiceSpec, r: &Inbound) -> NormalEvent {
        match parse_webhook(spec, r).unwrap() {
            WebhookOutcome::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn is_malformed<T: std::fmt::Debug>(r: Result<T, ParseError>) -> bool {
        matches!(r, Err(ParseError::Malformed(_)))
    }

    #[test]
    fn a_path_ending_in_a_bare_unicode_escape_is_refused_not_a_panic() {
        // serde_json_path 0.7.2 panics on these; the fuzz target found the first.
        for expr in [
            r#"$.a["\u"#,
            r#"$['\u"#,
            r#"$.a["x\uD800\u"#,
            r#"$.a["\nD800\u"#,
            r#"$.a["\uD"#,
            r#"$['\u00e"#,
            r#"$.a["x\uD800\uDC"#,
        ] {
            assert!(parse_json_path(expr).is_none(), "{expr}");
        }
        let payload = serde_json::json!({ "a": { "\u{e9}": "yes" }, "type": "t" });
        assert_eq!(
            json_path(r#"$.a["\u00e9"]"#, &payload).as_deref(),
            Some("yes")
        );
        assert_eq!(json_path("$.type", &payload).as_deref(), Some("t"));
    }

    #[test]
    fn stripe_customer_event() {
        let body = json!({
            "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
            "object": "event",
            "type": "customer.subscription.created",
            "data": {"object": {"id": "sub_1", "object": "subscription", "customer": "cus_NffrFeUfNV2Hib"}}
        });
        let e = webhook_event(
            &ServiceSpec::StripeEvents,
            &req("", &[JSON], &body.to_string()),
        );
        assert_eq!(e.event_type, "customer.subscription.created");
        assert_eq!(e.app_user_id.as_deref(), Some("cus_NffrFeUfNV2Hib"));
        assert_eq!(
            e.delivery_id.as_deref(),
            Some("evt_1NG8Du2eZvKYlo2CUI79vXWy")
        );
        assert!(e.valid_request);
        assert_eq!(e.payload, body);
    }

    #[test]
    fn stripe_customer_created_uses_the_customer_object() {
        let body = json!({
            "id": "evt_2", "type": "customer.created",
            "data": {"object": {"id": "cus_9", "object": "customer", "customer": null}}
        });
        let e = webhook_event(&ServiceSpec::StripeEvents, &req("", &[], &body.to_string()));
        assert_eq!(e.event_type, "customer.created");
        assert_eq!(e.app_user_id.as_deref(), Some("cus_9"));
        let with_field = json!({
            "id": "evt_3", "type": "customer.created",
            "data": {"object": {"id": "cus_10", "object": "customer", "customer": "cus_10"}}
        });
        let e = webhook_event(
            &ServiceSpec::StripeEvents,
            &req("", &[], &with_field.to_string()),
        );
        assert_eq!(e.app_user_id.as_deref(), Some("cus_10"));
    }

    #[test]
    fn stripe_connect_account_wins() {
        let body = json!({
            "id": "evt_4", "type": "payment_intent.succeeded", "account": "acct_1032D82eZvKYlo2C",
            "data": {"object": {"id": "pi_1", "customer": "cus_1"}}
        });
        let e = webhook_event(&ServiceSpec::StripeEvents, &req("", &[], &body.to_string()));
        assert_eq!(e.app_user_id.as_deref(), Some("acct_1032D82eZvKYlo2C"));
    }

    #[test]
    fn stripe_without_type_is_malformed() {
        assert!(is_malformed(parse_webhook(
            &ServiceSpec::StripeEvents,
            &req("", &[], r#"{"id":"evt_1"}"#)
        )));
    }

    #[test]
    fn github_issue_opened() {
        let body = json!({
            "action": "opened",
            "issue": {"number": 1347, "title": "Found a bug"},
            "sender": {"login": "octocat", "id": 1}
        });
        let r = req(
            "",
            &[
                JSON,
                ("x-github-event", "issues"),
                ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ],
            &body.to_string(),
        );
        let e = webhook_event(&ServiceSpec::GithubEvents, &r);
        assert_eq!(e.event_type, "issues.opened");
        assert_eq!(e.app_user_id.as_deref(), Some("octocat"));
        assert_eq!(
            e.delivery_id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(e.payload, body);
    }

    #[test]
    fn github_ping_and_form_delivery() {
        let body = json!({"zen": "Keep it logically awesome.", "hook_id": 42, "sender": {"login": "octocat"}});
        let r = req(
            "",
            &[("x-github-event", "ping"), ("x-github-delivery", "d-1")],
            &body.to_string(),
        );
        let e = webhook_event(&ServiceSpec::GithubEvents, &r);
        assert_eq!(e.event_type, "ping");
        assert_eq!(e.app_user_id.as_deref(), Some("octocat"));

        let form = form_body(&[("payload", body.to_string().as_str())]);
        let r = req("", &[FORM, ("x-github-event", "ping")], &form);
        let e = webhook_event(&ServiceSpec::GithubEvents, &r);
        assert_eq!(e.event_type, "ping");
        assert_eq!(e.payload, body);
    }

    #[test]
    fn github_without_event_header_is_malformed() {
        assert!(is_malformed(parse_webhook(
            &ServiceSpec::GithubEvents,
            &req("", &[JSON], r#"{"action":"opened"}"#)
        )));
    }

    #[test]
    fn slack_url_verification_is_a_handshake() {
        let body = r#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        let out = parse_webhook(&ServiceSpec::SlackEvents, &req("", &[JSON], body)).unwrap();
        assert_eq!(
            out,
            WebhookOutcome::Handshake {
                content_type: "text/plain".into(),
                body: "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P".into()
            }
        );
    }

    #[test]
    fn slack_event_callback() {
        let body = json!({
            "token": "XXYYZZ", "team_id": "T123ABC456", "api_app_id": "A123ABC456",
            "event": {"type": "message", "channel": "C123ABC456", "user": "U123ABC456",
                      "text": "Live long and prospect.", "ts": "1355517523.000005"},
            "type": "event_callback", "event_id": "Ev123ABC456", "event_time": 1355517523
        });
        let e = webhook_event(
            &ServiceSpec::SlackEvents,
            &req("", &[JSON], &body.to_string()),
        );
        assert_eq!(e.event_type, "message");
        assert_eq!(e.app_user_id.as_deref(), Some("U123ABC456"));
        assert_eq!(e.delivery_id.as_deref(), Some("Ev123ABC456"));

        let rate_limited = json!({"type": "app_rate_limited", "team_id": "T1"});
        let e = webhook_event(
            &ServiceSpec::SlackEvents,
            &req("", &[JSON], &rate_limited.to_string()),
        );
        assert_eq!(e.event_type, "app_rate_limited");
        assert_eq!(e.app_user_id, None);
    }

    #[test]
    fn twilio_inbound_sms() {
        let body = form_body(&[
            ("ToCountry", "US"),
            ("SmsMessageSid", "SM1a2b"),
            ("NumMedia", "0"),
            ("SmsSid", "SM1a2b"),
            ("Body", "Hello there"),
            ("To", "+15557654321"),
            ("MessageSid", "SM1a2b"),
            ("AccountSid", "AC123"),
            ("From", "+15551234567"),
        ]);
        let r = req("", &[FORM, ("i-twilio-idempotency-token", "tok-1")], &body);
        let e = webhook_event(&ServiceSpec::TwilioEvents, &r);
        assert_eq!(e.event_type, "message.received");
        assert_eq!(e.app_user_id.as_deref(), Some("+15551234567"));
        assert_eq!(e.delivery_id.as_deref(), Some("tok-1"));
        assert_eq!(e.payload["Body"], json!("Hello there"));
    }

    #[test]
    fn twilio_status_callbacks() {
        let body = form_body(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "delivered"),
            ("SmsStatus", "delivered"),
            ("From", "+15557654321"),
            ("To", "+15551234567"),
        ]);
        let e = webhook_event(&ServiceSpec::TwilioEvents, &req("", &[FORM], &body));
        assert_eq!(e.event_type, "message.delivered");

        let body = form_body(&[
            ("CallSid", "CA1"),
            ("CallStatus", "completed"),
            ("CallDuration", "42"),
            ("From", "+15551234567"),
        ]);
        let e = webhook_event(&ServiceSpec::TwilioEvents, &req("", &[FORM], &body));
        assert_eq!(e.event_type, "call.completed");
        assert_eq!(e.app_user_id.as_deref(), Some("+15551234567"));
    }

    #[test]
    fn twilio_json_body_and_unknown_callbacks() {
        let body = json!({"MessageSid": "SM2", "Body": "hi", "From": "+15550000000"});
        let e = webhook_event(
            &ServiceSpec::TwilioEvents,
            &req("?bodySHA256=abc", &[JSON], &body.to_string()),
        );
        assert_eq!(e.event_type, "message.received");
        assert_eq!(e.app_user_id.as_deref(), Some("+15550000000"));

        assert!(is_malformed(parse_webhook(
            &ServiceSpec::TwilioEvents,
            &req("", &[FORM], "")
        )));
        assert!(is_malformed(parse_webhook(
            &ServiceSpec::TwilioEvents,
            &req("", &[JSON], "[1,2]")
        )));
    }

    #[test]
    fn standard_webhooks() {
        let body = json!({"type": "invoice.paid", "timestamp": "2024-01-01T00:00:00Z",
                          "data": {"customer_id": 1234}});
        let r = req(
            "",
            &[JSON, ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")],
            &body.to_string(),
        );
        let spec = ServiceSpec::StandardWebhooksEvents {
            app_user_id: Some("$.data.customer_id".into()),
        };
        let e = webhook_event(&spec, &r);
        assert_eq!(e.event_type, "invoice.paid");
        assert_eq!(e.app_user_id.as_deref(), Some("1234"));
        assert_eq!(
            e.delivery_id.as_deref(),
            Some("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")
        );

        let e = webhook_event(
            &ServiceSpec::StandardWebhooksEvents { app_user_id: None },
            &r,
        );
        assert_eq!(e.app_user_id, None);
    }

    fn json_events_spec() -> ServiceSpec {
        ServiceSpec::JsonEvents(JsonEvents {
            event_type: "$.event.kind".into(),
            app_user_id: Some("header:X-Account".into()),
            delivery_id: Some("$.id".into()),
            handshake: Some(Handshake {
                echo: "query:validationToken".into(),
                when: None,
                equals: None,
            }),
        })
    }

    #[test]
    fn json_events_with_expressions() {
        let body = json!({"id": 99, "event": {"kind": "order.created"}});
        let r = req("", &[JSON, ("x-account", "acct-7")], &body.to_string());
        let e = webhook_event(&json_events_spec(), &r);
        assert_eq!(e.event_type, "order.created");
        assert_eq!(e.app_user_id.as_deref(), Some("acct-7"));
        assert_eq!(e.delivery_id.as_deref(), Some("99"));
        assert_eq!(e.payload, body);
    }

    #[test]
    fn json_events_handshake_from_query_even_with_an_empty_body() {
        let r = req("?validationToken=Validation%3A%20token", &[], "");
        assert_eq!(
            parse_webhook(&json_events_spec(), &r).unwrap(),
            WebhookOutcome::Handshake {
                content_type: "text/plain".into(),
                body: "Validation: token".into()
            }
        );
        // No token: no handshake, and an empty body is malformed.
        assert!(is_malformed(parse_webhook(
            &json_events_spec(),
            &req("", &[], "")
        )));
    }

    #[test]
    fn json_events_conditional_handshake_form_and_literal() {
        let spec = ServiceSpec::JsonEvents(JsonEvents {
            event_type: "literal:form.post".into(),
            app_user_id: Some("form:user".into()),
            delivery_id: Some("$.nonce".into()),
            handshake: Some(Handshake {
                echo: "form:challenge".into(),
                when: Some("form:kind".into()),
                equals: Some("verify".into()),
            }),
        });
        let verify = form_body(&[("kind", "verify"), ("challenge", "c-123")]);
        assert_eq!(
            parse_webhook(&spec, &req("", &[FORM], &verify)).unwrap(),
            WebhookOutcome::Handshake {
                content_type: "text/plain".into(),
                body: "c-123".into()
            }
        );
        let normal = form_body(&[
            ("kind", "event"),
            ("challenge", "c-123"),
            ("user", "u-5"),
            ("nonce", "n-1"),
        ]);
        let e = webhook_event(&spec, &req("", &[FORM], &normal));
        assert_eq!(e.event_type, "form.post");
        assert_eq!(e.app_user_id.as_deref(), Some("u-5"));
        assert_eq!(e.delivery_id.as_deref(), Some("n-1"));
        assert_eq!(e.payload["kind"], json!("event"));
    }

    #[test]
    fn json_events_missing_event_type_is_malformed() {
        let r = req("", &[JSON], r#"{"id":1}"#);
        assert!(is_malformed(parse_webhook(&json_events_spec(), &r)));
    }

    #[test]
    fn malformed_bodies() {
        for spec in [
            ServiceSpec::StripeEvents,
            ServiceSpec::SlackEvents,
            ServiceSpec::StandardWebhooksEvents { app_user_id: None },
        ] {
            for body in ["", "   ", "not json", "{\"type\":", "<xml/>"] {
                let err = parse_webhook(&spec, &req("", &[JSON], body)).unwrap_err();
                assert!(matches!(err, ParseError::Malformed(_)), "{spec:?} {body:?}");
                assert!(!err.to_string().contains("xml"), "{err}");
            }
        }
        let gh = req("", &[("x-github-event", "push")], "nope");
        assert!(is_malformed(parse_webhook(&ServiceSpec::GithubEvents, &gh)));
    }

    #[test]
    fn not_a_parser() {
        let r = req("", &[JSON], "{}");
        assert_eq!(
            parse_webhook(&ServiceSpec::Identity, &r),
            Err(ParseError::NotAParser)
        );
        assert_eq!(
            parse_webhook(&ServiceSpec::SlackInteractivity, &r),
            Err(ParseError::NotAParser)
        );
        assert_eq!(
            parse_action(&ServiceSpec::SlackEvents, &r),
            Err(ParseError::NotAParser)
        );
        assert_eq!(
            map_user(&ServiceSpec::GithubSignature, None, &json!({})),
            Err(ParseError::NotAParser)
        );
    }

    fn block_actions() -> Value {
        json!({
            "type": "block_actions",
            "user": {"id": "U0CA5", "username": "amy", "team_id": "T3MDE"},
            "api_app_id": "A0CA5",
            "token": "Shh_its_a_seekrit",
            "container": {"type": "message", "message_ts": "1548261231.000200"},
            "trigger_id": "12466734323.1395872398",
            "team": {"id": "T0CAG", "domain": "acme-creamery"},
            "response_url": "https://hooks.slack.com/actions/AABA1ABCD/1232321423432/D09sSasdasdAS9091209",
            "actions": [{
                "action_id": "WaXA", "block_id": "=qXel",
                "text": {"type": "plain_text", "text": "View", "emoji": true},
                "value": "click_me_123", "type": "button", "action_ts": "1548426417.840180"
            }]
        })
    }

    #[test]
    fn slack_block_actions() {
        let inner = block_actions();
        let body = form_body(&[("payload", inner.to_string().as_str())]);
        let a = parse_action(&ServiceSpec::SlackInteractivity, &req("", &[FORM], &body)).unwrap();
        assert_eq!(a.event.event_type, "block_actions");
        assert_eq!(a.event.app_user_id.as_deref(), Some("U0CA5"));
        assert_eq!(
            a.event.delivery_id.as_deref(),
            Some("12466734323.1395872398")
        );
        assert!(a.event.valid_request);
        assert_eq!(a.event.payload, inner);
        assert_eq!(a.action_id.as_deref(), Some("WaXA"));
        assert_eq!(a.value.as_deref(), Some("click_me_123"));
        assert_eq!(
            a.response_url.as_deref(),
            Some("https://hooks.slack.com/actions/AABA1ABCD/1232321423432/D09sSasdasdAS9091209")
        );
    }

    #[test]
    fn slack_select_menu_value() {
        let mut inner = block_actions();
        inner["actions"] = json!([{
            "action_id": "pick", "type": "static_select",
            "selected_option": {"text": {"type": "plain_text", "text": "Two"}, "value": "opt-2"}
        }]);
        let body = form_body(&[("payload", inner.to_string().as_str())]);
        let a = parse_action(&ServiceSpec::SlackInteractivity, &req("", &[FORM], &body)).unwrap();
        assert_eq!(a.action_id.as_deref(), Some("pick"));
        assert_eq!(a.value.as_deref(), Some("opt-2"));
    }

    #[test]
    fn slack_interactivity_malformed() {
        let spec = ServiceSpec::SlackInteractivity;
        assert!(is_malformed(parse_action(
            &spec,
            &req("", &[FORM], "foo=bar")
        )));
        let bad = form_body(&[("payload", "{not json")]);
        assert!(is_malformed(parse_action(&spec, &req("", &[FORM], &bad))));
        let no_type = form_body(&[("payload", "{}")]);
        assert!(is_malformed(parse_action(
            &spec,
            &req("", &[FORM], &no_type)
        )));
    }

    #[test]
    fn json_action() {
        let spec = ServiceSpec::JsonAction(JsonAction {
            action_type: "$.kind".into(),
            action_id: Some("$.action.id".into()),
            value: Some("$.action.value".into()),
            app_user_id: Some("$.actor.id".into()),
            response_url: Some("$.reply".into()),
            delivery_id: Some("header:X-Request-Id".into()),
        });
        let body = json!({"kind": "button.click", "action": {"id": "approve", "value": 3},
                          "actor": {"id": 77}, "reply": "https://example.com/r/1"});
        let a = parse_action(
            &spec,
            &req("", &[JSON, ("x-request-id", "req-1")], &body.to_string()),
        )
        .unwrap();
        assert_eq!(a.event.event_type, "button.click");
        assert_eq!(a.event.app_user_id.as_deref(), Some("77"));
        assert_eq!(a.event.delivery_id.as_deref(), Some("req-1"));
        assert_eq!(a.action_id.as_deref(), Some("approve"));
        assert_eq!(a.value.as_deref(), Some("3"));
        assert_eq!(a.response_url.as_deref(), Some("https://example.com/r/1"));

        assert!(is_malformed(parse_action(
            &spec,
            &req("", &[JSON], r#"{"action":{}}"#)
        )));
    }

    #[test]
    fn script_parsers() {
        let spec = ServiceSpec::Script {
            source: r#"
                if request.query.validationToken != () { return #{ handshake: request.query.validationToken }; }
                #{ event_type: request.json.t, app_user_id: request.json.u, action_id: "a1", value: "v1",
                   response_url: "https://r", delivery_id: request.headers["x-id"] }
            "#
            .into(),
        };
        let r = req("", &[JSON, ("x-id", "d1")], r#"{"t":"thing.done","u":5}"#);
        let e = webhook_event(&spec, &r);
        assert_eq!(e.event_type, "thing.done");
        assert_eq!(e.app_user_id.as_deref(), Some("5"));
        assert_eq!(e.delivery_id.as_deref(), Some("d1"));
        assert_eq!(e.payload, json!({"t": "thing.done", "u": 5}));

        let a = parse_action(&spec, &r).unwrap();
        assert_eq!(a.action_id.as_deref(), Some("a1"));
        assert_eq!(a.value.as_deref(), Some("v1"));
        assert_eq!(a.response_url.as_deref(), Some("https://r"));

        let hs = req("?validationToken=abc", &[], "");
        assert_eq!(
            parse_webhook(&spec, &hs).unwrap(),
            WebhookOutcome::Handshake {
                content_type: "text/plain".into(),
                body: "abc".into()
            }
        );
        assert!(matches!(
            parse_action(&spec, &hs),
            Err(ParseError::Script(_))
        ));

        let looping = ServiceSpec::Script {
            source: "loop {}".into(),
        };
        assert!(matches!(
            parse_webhook(&looping, &r),
            Err(ParseError::Script(m)) if m.starts_with("script stopped")
        ));
    }

    #[test]
    fn map_user_forms() {
        let payload = json!({"user": {"id": 12345, "email": "a@b.c"}, "From": "+1555"});
        assert_eq!(
            map_user(&ServiceSpec::Identity, Some("U1"), &payload),
            Ok(Some("U1".into()))
        );
        assert_eq!(map_user(&ServiceSpec::Identity, None, &payload), Ok(None));
        let path = |p: &str| ServiceSpec::PayloadUser { path: p.into() };
        assert_eq!(
            map_user(&path("$.user.id"), None, &payload),
            Ok(Some("12345".into()))
        );
        assert_eq!(
            map_user(&path("$.user.email"), None, &payload),
            Ok(Some("a@b.c".into()))
        );
        assert_eq!(map_user(&path("$.user.missing"), None, &payload), Ok(None));
        assert_eq!(
            map_user(&path("form:From"), None, &payload),
            Ok(Some("+1555".into()))
        );
        assert_eq!(
            map_user(&ServiceSpec::MappingTable, Some("U1"), &payload),
            Err(ParseError::NotAParser)
        );
        let script = ServiceSpec::Script {
            source: r#"if app_user_id == () { payload.user.email } else { app_user_id }"#.into(),
        };
        assert_eq!(map_user(&script, None, &payload), Ok(Some("a@b.c".into())));
        assert_eq!(
            map_user(&script, Some("U2"), &payload),
            Ok(Some("U2".into()))
        );
    }

    #[test]
    fn eval_expr_forms() {
        let r = req(
            "?a=1&b=two%20words#frag",
            &[FORM, ("x-thing", "h-val")],
            "f=form%20val&g=2",
        );
        let json = json!({"a": {"b": [10, {"c": "deep"}]}, "n": null, "o": {"k": true}});
        assert_eq!(
            eval_expr("header:X-Thing", &r, &json).as_deref(),
            Some("h-val")
        );
        assert_eq!(
            eval_expr("query:b", &r, &json).as_deref(),
            Some("two words")
        );
        assert_eq!(eval_expr("form:f", &r, &json).as_deref(), Some("form val"));
        assert_eq!(eval_expr("literal:x:y", &r, &json).as_deref(), Some("x:y"));
        assert_eq!(eval_expr("$.a.b[1].c", &r, &json).as_deref(), Some("deep"));
        assert_eq!(eval_expr("$.a.b[0]", &r, &json).as_deref(), Some("10"));
        assert_eq!(
            eval_expr("$.o", &r, &json).as_deref(),
            Some(r#"{"k":true}"#)
        );
        assert_eq!(eval_expr("$.n", &r, &json), None);
        assert_eq!(eval_expr("$[", &r, &json), None);
        assert_eq!(eval_expr("header:Missing", &r, &json), None);
        assert_eq!(eval_expr("bogus:x", &r, &json), None);
        assert_eq!(eval_expr("nothing", &r, &json), None);
    }
}
