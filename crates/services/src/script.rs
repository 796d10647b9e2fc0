//! The script sandbox: runs a tenant's rhai script as a Webhook Parser, an
//! Action Callback Parser, a User Id Mapper or a Webhook Event Verifier.
//!
//! This module owns the sandbox (which engine features a script gets, its
//! limits) and the script contract below. It must not give a script any way
//! out: no file, network, clock-sleeping or module access, no output
//! (`print`/`debug` go nowhere), no `eval`, nothing cached across calls but
//! an AST the caller chose to keep ([`CompiledScript`]). A script error never
//! crashes the caller (panics inside the engine are caught) and a verifier's
//! error text never carries the secret.
//!
//! # Script contract
//!
//! Every script sees a constant `request` map:
//!
//! | key       | value                                                        |
//! |-----------|--------------------------------------------------------------|
//! | `method`  | the HTTP method, e.g. `"POST"`                               |
//! | `url`     | the full URL as the provider called it                       |
//! | `headers` | map of header name (lower case) to its first value           |
//! | `query`   | map of query-string parameter to its first value             |
//! | `body`    | the body as a string (invalid UTF-8 replaced)                |
//! | `json`    | the body parsed as JSON, or `()` when it is not JSON         |
//! | `form`    | map of form field to its first value (empty unless a form)   |
//! | `now`     | receipt time, seconds since the Unix epoch                   |
//!
//! (A mapper sees no `request`; see below.)
//!
//! * A **parser** returns a map with `event_type` (a non-empty string,
//!   required) and optionally `app_user_id`, `delivery_id`, `action_id`,
//!   `value`, `response_url` (strings or numbers; `()` or `""` mean absent),
//!   `valid_request` (bool, default `true`) and `payload` (any value; by
//!   default the JSON body, or the form as a map). A webhook parser may
//!   instead answer a provider's handshake by returning `handshake` (a string
//!   echoed as `text/plain`); `event_type` is then not required.
//! * A **mapper** sees `app_user_id` (string or `()`) and `payload` and
//!   returns the platform user id as a string (or number), or `()` for none.
//! * A **verifier** sees `request` and `secret` (string) and returns a bool.
//!
//! Helper functions, available to every script:
//! `hmac_sha256_hex(key, msg)`, `hmac_sha256_base64(key, msg)`,
//! `hmac_sha1_base64(key, msg)`, `sha256_hex(msg)` and
//! `constant_time_eq(a, b)`; keys and messages are strings, used as UTF-8.
//!
//! Limits ([`Limits`]): operations, wall time, string length, array and map
//! sizes, and call depth. Hitting one stops the script with its own error.
//! Known gap (rhai's): map keys do not count towards the string limit, and
//! adding a key by index (`m[k] = v`) does not check the map's size, so the
//! memory such a loop takes is bounded by the operation and wall limits only.
//!
//! Each run is blocking (up to the wall limit) and happens on a thread of its
//! own with a large stack, joined before returning; async callers should
//! call it from `spawn_blocking`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, Engine, EvalAltResult, Map, OptimizationLevel, Scope, AST};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Inbound;

/// How much a script may use before it is stopped. A zero limit counts as 1
/// (rhai reads 0 as "unlimited", which a sandbox never wants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_operations: u64,
    pub max_wall: Duration,
    /// Bytes in one string.
    pub max_string: usize,
    /// Items in one array.
    pub max_array: usize,
    /// Entries in one object map.
    pub max_map: usize,
    /// Nested function calls.
    pub max_call_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000,
            max_wall: Duration::from_millis(200),
            max_string: 1024 * 1024,
            max_array: 10_000,
            max_map: 10_000,
            max_call_depth: 32,
        }
    }
}

/// Why a script did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error("script does not compile: {0}")]
    Compile(String),
    #[error("script stopped: it used more than {0} operations")]
    TooManyOperations(u64),
    #[error("script stopped: it ran longer than {0} ms")]
    TooSlow(u64),
    #[error("script stopped: {0} grew past its limit")]
    TooLarge(String),
    #[error("script failed: {0}")]
    Runtime(String),
    #[error("script returned {0}, expected {1}")]
    BadReturn(String, String),
}

/// What a parser script returned, in the shape both parser roles need.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptParsed {
    /// Empty only when `handshake` is set.
    pub event_type: String,
    pub app_user_id: Option<String>,
    pub delivery_id: Option<String>,
    pub valid_request: bool,
    pub action_id: Option<String>,
    pub value: Option<String>,
    pub response_url: Option<String>,
    pub payload: Value,
    /// Text to echo (as `text/plain`) to a provider's handshake.
    pub handshake: Option<String>,
}

/// A compiled script, to reuse across calls. Each run still gets a fresh
/// engine with its own limits; only the AST is shared.
#[derive(Debug, Clone)]
pub struct CompiledScript {
    ast: AST,
}

impl CompiledScript {
    /// Compiles `source` with the sandbox's syntax rules (no `eval`, bounded
    /// expression depth).
    pub fn compile(source: &str) -> Result<Self, ScriptError> {
        let engine = sandbox(&Limits::default());
        let ast = engine
            .compile(source)
            .map_err(|e| ScriptError::Compile(clip(&e.to_string())))?;
        Ok(Self { ast })
    }

    /// Runs the script as a parser (webhook or action callback).
    pub fn parse(&self, req: &Inbound, limits: Limits) -> Result<ScriptParsed, ScriptError> {
        let setup = || {
            let (request, json, form) = request_value(req);
            let default_payload = match json {
                Some(json) => json,
                None if req.is_form() => Value::Object(form),
                None => Value::Null,
            };
            let mut scope = Scope::new();
            scope.push_constant_dynamic("request", request);
            (scope, default_payload)
        };
        run(&self.ast, &limits, None, setup, parsed_from)
    }

    /// Runs the script as a user id mapper.
    pub fn map_user(
        &self,
        app_user_id: Option<&str>,
        payload: &Value,
        limits: Limits,
    ) -> Result<Option<String>, ScriptError> {
        let setup = || {
            let mut scope = Scope::new();
            scope.push_constant_dynamic(
                "app_user_id",
                app_user_id.map_or(Dynamic::UNIT, |s| s.to_string().into()),
            );
            scope.push_constant_dynamic("payload", json_to_dynamic(payload));
            (scope, ())
        };
        run(&self.ast, &limits, None, setup, |out, ()| {
            text_of(&out, "the result")
                .map_err(|got| ScriptError::BadReturn(got, "a string or ()".into()))
        })
    }

    /// Runs the script as a webhook event verifier.
    pub fn verify(
        &self,
        secret: &SecretString,
        req: &Inbound,
        limits: Limits,
    ) -> Result<bool, ScriptError> {
        let secret = secret.expose_secret();
        let setup = || {
            let (request, _, _) = request_value(req);
            let mut scope = Scope::new();
            scope.push_constant_dynamic("request", request);
            scope.push_constant("secret", secret.to_string());
            (scope, ())
        };
        run(&self.ast, &limits, Some(secret), setup, |out, ()| {
            out.as_bool()
                .map_err(|got| ScriptError::BadReturn(got.to_string(), "a bool".into()))
        })
    }
}

/// Compiles a script without running it (used when a service is saved).
pub fn check(source: &str) -> Result<(), ScriptError> {
    CompiledScript::compile(source).map(|_| ())
}

/// Compiles and runs a parser script on a request.
pub fn run_parser(
    source: &str,
    req: &Inbound,
    limits: Limits,
) -> Result<ScriptParsed, ScriptError> {
    CompiledScript::compile(source)?.parse(req, limits)
}

/// Compiles and runs a user id mapper script.
pub fn run_mapper(
    source: &str,
    app_user_id: Option<&str>,
    payload: &Value,
    limits: Limits,
) -> Result<Option<String>, ScriptError> {
    CompiledScript::compile(source)?.map_user(app_user_id, payload, limits)
}

/// Compiles and runs a verifier script; `Ok(false)` means the signature
/// check failed.
pub fn run_verifier(
    source: &str,
    secret: &SecretString,
    req: &Inbound,
    limits: Limits,
) -> Result<bool, ScriptError> {
    CompiledScript::compile(source)?.verify(secret, req, limits)
}

/// A fresh engine with no I/O, no output, no modules and the given limits.
fn sandbox(limits: &Limits) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(StandardPackage::new().as_shared_module());
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.set_max_modules(0);
    engine.disable_symbol("eval");
    // No evaluation at compile time: everything runs under the limits.
    engine.set_optimization_level(OptimizationLevel::None);
    engine.set_max_operations(limits.max_operations.max(1));
    engine.set_max_string_size(limits.max_string.max(1));
    engine.set_max_array_size(limits.max_array.max(1));
    engine.set_max_map_size(limits.max_map.max(1));
    engine.set_max_call_levels(limits.max_call_depth);
    engine.set_max_expr_depths(64, 32);
    register_helpers(&mut engine);
    engine
}

fn register_helpers(engine: &mut Engine) {
    engine.register_fn("hmac_sha256_hex", |key: &str, msg: &str| {
        hex::encode(hmac_sha256(key, msg))
    });
    engine.register_fn("hmac_sha256_base64", |key: &str, msg: &str| {
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, msg))
    });
    engine.register_fn("hmac_sha1_base64", |key: &str, msg: &str| {
        base64::engine::general_purpose::STANDARD.encode(hmac_sha1(key, msg))
    });
    engine.register_fn("sha256_hex", |msg: &str| {
        hex::encode(Sha256::digest(msg.as_bytes()))
    });
    engine.register_fn("constant_time_eq", |a: &str, b: &str| {
        a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
    });
}

fn hmac_sha256(key: &str, msg: &str) -> Vec<u8> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail here.
    Hmac::<Sha256>::new_from_slice(key.as_bytes())
        .map(|m| {
            m.chain_update(msg.as_bytes())
                .finalize()
                .into_bytes()
                .to_vec()
        })
        .unwrap_or_default()
}

fn hmac_sha1(key: &str, msg: &str) -> Vec<u8> {
    Hmac::<Sha1>::new_from_slice(key.as_bytes())
        .map(|m| {
            m.chain_update(msg.as_bytes())
                .finalize()
                .into_bytes()
                .to_vec()
        })
        .unwrap_or_default()
}

/// The stack of the thread a script runs on. rhai bounds call and
/// expression depth, but data a script builds (`a = [a]` in a loop) nests as
/// deep as the array and map size limits allow (each level counts), and
/// cloning, sizing, printing or dropping it recurses once per level. Under
/// the default limits that is up to ~20,000 levels, more than the 2 MiB
/// stack of a caller's thread (a tokio worker) holds; this one holds it many
/// times over (the memory is reserved, not used, until needed).
const SCRIPT_STACK: usize = 64 * 1024 * 1024;

/// Runs `ast` in a fresh sandbox on its own thread: `setup` builds the
/// scope (and a context for `finish`), `finish` turns the script's value
/// into the answer. Every rhai value is created and dropped on that thread.
/// Every failure, including a panic inside the engine, is a [`ScriptError`].
fn run<C, T: Send>(
    ast: &AST,
    limits: &Limits,
    secret: Option<&str>,
    setup: impl FnOnce() -> (Scope<'static>, C) + Send,
    finish: impl FnOnce(Dynamic, C) -> Result<T, ScriptError> + Send,
) -> Result<T, ScriptError> {
    let failed = || ScriptError::Runtime("the script engine failed unexpectedly".into());
    let work = || {
        catch_unwind(AssertUnwindSafe(|| {
            let (mut scope, context) = setup();
            let out = eval(ast, &mut scope, limits, secret)?;
            finish(out, context)
        }))
        .unwrap_or_else(|_| Err(failed()))
    };
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("latchkey-script".into())
            .stack_size(SCRIPT_STACK)
            .spawn_scoped(s, work)
            .map_err(|_| ScriptError::Runtime("the script sandbox could not start".into()))?
            .join()
            .unwrap_or_else(|_| Err(failed()))
    })
}

/// Evaluates `ast` with a fresh engine and the wall-time limit.
fn eval(
    ast: &AST,
    scope: &mut Scope,
    limits: &Limits,
    secret: Option<&str>,
) -> Result<Dynamic, ScriptError> {
    let mut engine = sandbox(limits);
    let max_wall = limits.max_wall;
    let started = Instant::now();
    engine.on_progress(move |ops| {
        // Checking the clock every 16 operations keeps the cost negligible.
        (ops % 16 == 0 && started.elapsed() > max_wall).then_some(Dynamic::UNIT)
    });
    engine
        .eval_ast_with_scope::<Dynamic>(scope, ast)
        .map_err(|err| map_error(&err, limits, secret))
}

/// The error that stopped the script, under any function-call wrappers.
fn root(err: &EvalAltResult) -> &EvalAltResult {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => root(inner),
        other => other,
    }
}

fn map_error(err: &EvalAltResult, limits: &Limits, secret: Option<&str>) -> ScriptError {
    let base = root(err);
    match base {
        EvalAltResult::ErrorTooManyOperations(_) => {
            ScriptError::TooManyOperations(limits.max_operations.max(1))
        }
        EvalAltResult::ErrorTerminated(..) => {
            ScriptError::TooSlow(u64::try_from(limits.max_wall.as_millis()).unwrap_or(u64::MAX))
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => ScriptError::TooLarge(data_kind(what).into()),
        EvalAltResult::ErrorStackOverflow(_) => ScriptError::Runtime(format!(
            "functions nested deeper than {} calls",
            limits.max_call_depth
        )),
        _ => ScriptError::Runtime(match secret {
            None => clip(&err.to_string()),
            Some(secret) => redact(&secret_safe_text(base), secret),
        }),
    }
}

fn data_kind(rhai_text: &str) -> &'static str {
    let text = rhai_text.to_ascii_lowercase();
    if text.contains("string") {
        "a string"
    } else if text.contains("map") {
        "a map"
    } else if text.contains("array") || text.contains("blob") {
        "an array"
    } else {
        "a value"
    }
}

/// An error's text for a script that holds a secret: only the kinds whose
/// text comes from the script's source or from type names are shown; the
/// rest (a thrown value, a missing index, arithmetic on values...) could
/// carry the secret or part of it, so they are named generically.
fn secret_safe_text(err: &EvalAltResult) -> String {
    use EvalAltResult as E;
    let shown = matches!(
        err,
        E::ErrorParsing(..)
            | E::ErrorVariableExists(..)
            | E::ErrorForbiddenVariable(..)
            | E::ErrorVariableNotFound(..)
            | E::ErrorFunctionNotFound(..)
            | E::ErrorModuleNotFound(..)
            | E::ErrorUnboundThis(..)
            | E::ErrorMismatchDataType(..)
            | E::ErrorMismatchOutputType(..)
            | E::ErrorIndexingType(..)
            | E::ErrorFor(..)
            | E::ErrorNonPureMethodCallOnConstant(..)
            | E::ErrorAssignmentToConstant(..)
            | E::ErrorDotExpr(..)
            | E::ErrorTooManyVariables(..)
            | E::ErrorTooManyModules(..)
    );
    if shown {
        return clip(&err.to_string());
    }
    let kind = match err {
        E::ErrorRuntime(..) => "the script threw an exception",
        E::ErrorIndexNotFound(..) | E::ErrorArrayBounds(..) | E::ErrorStringBounds(..) => {
            "an index is out of bounds or not found"
        }
        E::ErrorArithmetic(..) => "an arithmetic error",
        _ => "a runtime error",
    };
    let pos = err.position();
    if pos.is_none() {
        kind.to_string()
    } else {
        format!("{kind} ({pos})")
    }
}

/// Removes every occurrence of `secret` from `text`.
fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "[redacted]")
    }
}

/// Error texts are short: they may quote request values.
fn clip(text: &str) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The `request` map, plus the parsed JSON body and the form as JSON (for
/// the default payload).
fn request_value(req: &Inbound) -> (Dynamic, Option<Value>, serde_json::Map<String, Value>) {
    let json: Option<Value> = serde_json::from_slice(&req.body).ok();

    let mut headers = Map::new();
    for (name, value) in &req.headers {
        headers
            .entry(name.to_ascii_lowercase().into())
            .or_insert_with(|| value.clone().into());
    }

    let mut query = Map::new();
    if let Some((_, q)) = req.url.split_once('?') {
        let q = q.split('#').next().unwrap_or("");
        for (k, v) in serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default() {
            query.entry(k.into()).or_insert_with(|| v.into());
        }
    }

    let mut form = Map::new();
    let mut form_json = serde_json::Map::new();
    for (k, v) in req.form() {
        form_json
            .entry(k.clone())
            .or_insert_with(|| Value::String(v.clone()));
        form.entry(k.into()).or_insert_with(|| v.into());
    }

    let mut request = Map::new();
    request.insert("method".into(), req.method.clone().into());
    request.insert("url".into(), req.url.clone().into());
    request.insert("headers".into(), Dynamic::from_map(headers));
    request.insert("query".into(), Dynamic::from_map(query));
    request.insert(
        "body".into(),
        String::from_utf8_lossy(&req.body).into_owned().into(),
    );
    request.insert(
        "json".into(),
        json.as_ref().map_or(Dynamic::UNIT, json_to_dynamic),
    );
    request.insert("form".into(), Dynamic::from_map(form));
    request.insert("now".into(), Dynamic::from_int(req.now));
    (Dynamic::from_map(request), json, form_json)
}

/// JSON to a rhai value (serde_json bounds the nesting depth when parsing).
fn json_to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => n.as_f64().map_or(Dynamic::UNIT, Dynamic::from_float),
        },
        Value::String(s) => s.clone().into(),
        Value::Array(items) => Dynamic::from_array(items.iter().map(json_to_dynamic).collect()),
        Value::Object(fields) => Dynamic::from_map(
            fields
                .iter()
                .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
                .collect(),
        ),
    }
}

/// How deep a `payload` a parser script returns may nest (serde_json's own
/// parsing limit).
const MAX_PAYLOAD_DEPTH: usize = 128;

/// A rhai value back to JSON (for a `payload` a parser script returns);
/// `None` when it nests deeper than `depth` levels.
fn dynamic_to_json(value: &Dynamic, depth: usize) -> Option<Value> {
    let nested = |v: &Dynamic| depth.checked_sub(1).and_then(|d| dynamic_to_json(v, d));
    Some(if value.is_unit() {
        Value::Null
    } else if let Ok(b) = value.as_bool() {
        Value::Bool(b)
    } else if let Ok(i) = value.as_int() {
        Value::from(i)
    } else if let Ok(f) = value.as_float() {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    } else if value.is_string() || value.is_char() {
        Value::String(value.to_string())
    } else if let Some(items) = value.read_lock::<rhai::Array>() {
        Value::Array(items.iter().map(nested).collect::<Option<_>>()?)
    } else if let Some(fields) = value.read_lock::<Map>() {
        Value::Object(
            fields
                .iter()
                .map(|(k, v)| Some((k.to_string(), nested(v)?)))
                .collect::<Option<_>>()?,
        )
    } else {
        Value::String(value.to_string())
    })
}

/// A returned value as optional text: a string or number, `()` or `""` for
/// none. `Err` carries a description of what was found instead.
fn text_of(value: &Dynamic, what: &str) -> Result<Option<String>, String> {
    if value.is_unit() {
        Ok(None)
    } else if value.is_string() || value.is_char() || value.is_int() || value.is_float() {
        let text = value.to_string();
        Ok((!text.is_empty()).then_some(text))
    } else {
        Err(format!("{} for {what}", value.type_name()))
    }
}

fn parsed_from(out: Dynamic, default_payload: Value) -> Result<ScriptParsed, ScriptError> {
    let type_name = out.type_name();
    let Some(map) = out.try_cast::<Map>() else {
        return Err(ScriptError::BadReturn(
            type_name.into(),
            "a map with event_type".into(),
        ));
    };
    let field = |key: &str| -> Result<Option<String>, ScriptError> {
        match map.get(key) {
            None => Ok(None),
            Some(v) => {
                text_of(v, key).map_err(|got| ScriptError::BadReturn(got, "a string or ()".into()))
            }
        }
    };
    let handshake = field("handshake")?;
    let event_type = match (field("event_type")?, &handshake) {
        (Some(t), _) => t,
        (None, Some(_)) => String::new(),
        (None, None) => {
            return Err(ScriptError::BadReturn(
                "a map without event_type".into(),
                "a map with a non-empty event_type".into(),
            ))
        }
    };
    let valid_request = match map.get("valid_request") {
        None => true,
        Some(v) if v.is_unit() => true,
        Some(v) => v.as_bool().map_err(|got| {
            ScriptError::BadReturn(format!("{got} for valid_request"), "a bool".into())
        })?,
    };
    Ok(ScriptParsed {
        app_user_id: field("app_user_id")?,
        delivery_id: field("delivery_id")?,
        action_id: field("action_id")?,
        value: field("value")?,
        response_url: field("response_url")?,
        payload: match map.get("payload") {
            None => default_payload,
            Some(v) => dynamic_to_json(v, MAX_PAYLOAD_DEPTH).ok_or_else(|| {
                ScriptError::BadReturn(
                    format!("a payload nested deeper than {MAX_PAYLOAD_DEPTH} levels"),
                    "a shallower payload".into(),
                )
            })?,
        },
        event_type,
        valid_request,
        handshake,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(body: &str, headers: &[(&str, &str)]) -> Inbound {
        Inbound {
            method: "POST".into(),
            url: "https://latchkey.example/hooks/abc?x=1".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            now: 1_700_000_000,
        }
    }

    #[test]
    fn parser_script_returns_a_map() {
        let source = r#"
            let j = request.json;
            #{
                event_type: j.kind + "." + j.action,
                app_user_id: j.user.id,
                delivery_id: request.headers["x-delivery"],
                action_id: request.query.x,
            }
        "#;
        let r = req(
            r#"{"kind":"order","action":"paid","user":{"id":42}}"#,
            &[("x-delivery", "d-1"), ("content-type", "application/json")],
        );
        let parsed = run_parser(source, &r, Limits::default()).unwrap();
        assert_eq!(parsed.event_type, "order.paid");
        assert_eq!(parsed.app_user_id.as_deref(), Some("42"));
        assert_eq!(parsed.delivery_id.as_deref(), Some("d-1"));
        assert_eq!(parsed.action_id.as_deref(), Some("1"));
        assert!(parsed.valid_request);
        assert_eq!(parsed.handshake, None);
        assert_eq!(parsed.payload["user"]["id"], json!(42));
    }

    #[test]
    fn parser_script_sees_form_and_may_set_payload_and_validity() {
        let source = r#"#{ event_type: "sms", app_user_id: request.form.From,
                          valid_request: false, payload: #{ from: request.form.From, n: [1, 2] } }"#;
        let r = req(
            "From=%2B15551234567&Body=hi",
            &[("content-type", "application/x-www-form-urlencoded")],
        );
        let parsed = run_parser(source, &r, Limits::default()).unwrap();
        assert_eq!(parsed.app_user_id.as_deref(), Some("+15551234567"));
        assert!(!parsed.valid_request);
        assert_eq!(parsed.payload, json!({"from": "+15551234567", "n": [1, 2]}));
    }

    #[test]
    fn parser_default_payload_is_the_form() {
        let r = req(
            "a=1&b=2",
            &[("content-type", "application/x-www-form-urlencoded")],
        );
        let parsed = run_parser(r#"#{ event_type: "x" }"#, &r, Limits::default()).unwrap();
        assert_eq!(parsed.payload, json!({"a": "1", "b": "2"}));
    }

    #[test]
    fn parser_handshake_needs_no_event_type() {
        let source = r#"#{ handshake: request.query.x }"#;
        let parsed = run_parser(source, &req("", &[]), Limits::default()).unwrap();
        assert_eq!(parsed.handshake.as_deref(), Some("1"));
        assert_eq!(parsed.event_type, "");
    }

    #[test]
    fn parser_bad_returns() {
        let r = req("{}", &[]);
        assert!(matches!(
            run_parser("42", &r, Limits::default()),
            Err(ScriptError::BadReturn(..))
        ));
        assert!(matches!(
            run_parser("#{ app_user_id: \"u\" }", &r, Limits::default()),
            Err(ScriptError::BadReturn(..))
        ));
        assert!(matches!(
            run_parser("#{ event_type: [1] }", &r, Limits::default()),
            Err(ScriptError::BadReturn(..))
        ));
        assert!(matches!(
            run_parser(
                "#{ event_type: \"a\", valid_request: \"yes\" }",
                &r,
                Limits::default()
            ),
            Err(ScriptError::BadReturn(..))
        ));
    }

    #[test]
    fn endless_loop_stops_quickly() {
        let started = Instant::now();
        let err = run_parser("loop {}", &req("{}", &[]), Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                ScriptError::TooManyOperations(1_000_000) | ScriptError::TooSlow(200)
            ),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn operation_and_wall_limits_each_stop_a_script() {
        let few_ops = Limits {
            max_operations: 1_000,
            ..Limits::default()
        };
        assert_eq!(
            run_parser("loop {}", &req("{}", &[]), few_ops).unwrap_err(),
            ScriptError::TooManyOperations(1_000)
        );
        let short = Limits {
            max_operations: u64::MAX,
            max_wall: Duration::from_millis(20),
            ..Limits::default()
        };
        let started = Instant::now();
        assert_eq!(
            run_parser("loop {}", &req("{}", &[]), short).unwrap_err(),
            ScriptError::TooSlow(20)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// Limits whose wall time cannot fire first on a loaded machine, so a
    /// size test fails only on size.
    fn generous_time() -> Limits {
        Limits {
            max_wall: std::time::Duration::from_secs(30),
            ..Limits::default()
        }
    }

    #[test]
    fn growing_string_is_too_large() {
        let err = run_parser(
            r#"let s = "x"; loop { s += s; }"#,
            &req("{}", &[]),
            generous_time(),
        )
        .unwrap_err();
        assert_eq!(err, ScriptError::TooLarge("a string".into()));
        let err = run_parser(
            "let a = []; loop { a.push(1); }",
            &req("{}", &[]),
            generous_time(),
        )
        .unwrap_err();
        assert_eq!(err, ScriptError::TooLarge("an array".into()));
    }

    #[test]
    fn deeply_nested_data_does_not_crash() {
        // rhai does not bound data nesting; the sandbox's own stack must hold it.
        let started = Instant::now();
        let err = run_parser(
            "let a = []; loop { a = [a]; }",
            &req("{}", &[]),
            Limits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ScriptError::TooManyOperations(_) | ScriptError::TooSlow(_)
            ),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        let err = run_parser(
            "let a = []; for i in 0..200 { a = [a]; } #{ event_type: \"x\", payload: a }",
            &req("{}", &[]),
            Limits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ScriptError::BadReturn(..)), "{err:?}");
    }

    #[test]
    fn deep_recursion_fails_cleanly() {
        let err = run_parser(
            "fn f(n) { f(n + 1) } f(0)",
            &req("{}", &[]),
            Limits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ScriptError::Runtime(m) if m.contains("deeper than 32")),
            "{err:?}"
        );
    }

    #[test]
    fn import_and_eval_are_unavailable() {
        let r = req("{}", &[]);
        let err = run_parser(
            r#"import "x" as y; #{ event_type: "a" }"#,
            &r,
            Limits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, ScriptError::Runtime(_) | ScriptError::Compile(_)),
            "{err:?}"
        );
        assert!(matches!(
            check(r#"eval("40 + 2")"#),
            Err(ScriptError::Compile(_))
        ));
    }

    #[test]
    fn print_and_debug_are_silent_no_ops() {
        let parsed = run_parser(
            r#"print("hello"); debug("there"); #{ event_type: "ok" }"#,
            &req("{}", &[]),
            Limits::default(),
        )
        .unwrap();
        assert_eq!(parsed.event_type, "ok");
    }

    #[test]
    fn compile_errors() {
        assert!(matches!(check("let = ;"), Err(ScriptError::Compile(_))));
        assert!(matches!(
            run_parser("fn (", &req("{}", &[]), Limits::default()),
            Err(ScriptError::Compile(_))
        ));
        assert_eq!(check(r#"#{ event_type: "a" }"#), Ok(()));
    }

    #[test]
    fn runtime_errors_are_reported() {
        let err = run_parser(r#"throw "nope""#, &req("{}", &[]), Limits::default()).unwrap_err();
        assert!(
            matches!(&err, ScriptError::Runtime(m) if m.contains("nope")),
            "{err:?}"
        );
    }

    const VERIFIER: &str = r#"
        let expected = "sha256=" + hmac_sha256_hex(secret, request.body);
        constant_time_eq(expected, request.headers["x-signature"])
    "#;

    #[test]
    fn verifier_with_hmac_passes_and_fails() {
        let secret = SecretString::from("s3cr3t-key");
        let body = r#"{"hello":"world"}"#;
        let good = format!("sha256={}", hex::encode(hmac_sha256("s3cr3t-key", body)));
        let ok = req(body, &[("x-signature", good.as_str())]);
        assert_eq!(
            run_verifier(VERIFIER, &secret, &ok, Limits::default()),
            Ok(true)
        );
        let bad = req(body, &[("x-signature", "sha256=00")]);
        assert_eq!(
            run_verifier(VERIFIER, &secret, &bad, Limits::default()),
            Ok(false)
        );
        let other_body = req(r#"{"hello":"moon"}"#, &[("x-signature", good.as_str())]);
        assert_eq!(
            run_verifier(VERIFIER, &secret, &other_body, Limits::default()),
            Ok(false)
        );
    }

    #[test]
    fn helpers_match_known_values() {
        let r = req("", &[]);
        let source = r#"
            hmac_sha256_base64("key", "The quick brown fox jumps over the lazy dog") == "97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg="
            && hmac_sha1_base64("key", "The quick brown fox jumps over the lazy dog") == "3nybhbi3iqa8ino29wqQcBydtNk="
            && sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            && !constant_time_eq("a", "ab")
        "#;
        let secret = SecretString::from("unused");
        assert_eq!(
            run_verifier(source, &secret, &r, Limits::default()),
            Ok(true)
        );
    }

    #[test]
    fn verifier_must_return_a_bool() {
        let secret = SecretString::from("k");
        let err = run_verifier("secret", &secret, &req("", &[]), Limits::default()).unwrap_err();
        assert_eq!(
            err,
            ScriptError::BadReturn("string".into(), "a bool".into())
        );
    }

    #[test]
    fn verifier_errors_never_carry_the_secret() {
        let secret = SecretString::from("hunter2-very-secret");
        let r = req("{}", &[]);
        for source in [
            "throw secret",
            "throw secret.sub_string(3)",
            "let m = #{}; m.x = 1; [1][secret]",
            "fn f(s) { throw `bad ${s}` } f(secret)",
            "secret.no_such_method()",
            "let x = secret; x.to_int()",
        ] {
            let err = run_verifier(source, &secret, &r, Limits::default()).unwrap_err();
            let text = err.to_string();
            assert!(!text.contains("hunter2"), "{source}: {text}");
            assert!(!text.contains("ter2-very"), "{source}: {text}");
        }
    }

    #[test]
    fn mapper_returns_string_or_unit() {
        let payload = json!({"user": {"email": "a@example.com", "n": 7}});
        assert_eq!(
            run_mapper("payload.user.email", None, &payload, Limits::default()),
            Ok(Some("a@example.com".into()))
        );
        assert_eq!(
            run_mapper("payload.user.n", None, &payload, Limits::default()),
            Ok(Some("7".into()))
        );
        assert_eq!(
            run_mapper(
                r#""u-" + app_user_id"#,
                Some("9"),
                &payload,
                Limits::default()
            ),
            Ok(Some("u-9".into()))
        );
        assert_eq!(
            run_mapper("app_user_id", None, &payload, Limits::default()),
            Ok(None)
        );
        assert!(matches!(
            run_mapper("[1]", None, &payload, Limits::default()),
            Err(ScriptError::BadReturn(..))
        ));
    }

    #[test]
    fn compiled_script_is_reusable() {
        let script = CompiledScript::compile(r#"#{ event_type: request.json.t }"#).unwrap();
        for t in ["a", "b"] {
            let body = format!(r#"{{"t":"{t}"}}"#);
            let parsed = script.parse(&req(&body, &[]), Limits::default()).unwrap();
            assert_eq!(parsed.event_type, t);
        }
    }

    #[test]
    fn json_round_trips_through_rhai() {
        let v = json!({"a": [1, 2.5, "x", true, null, {"b": {}}]});
        assert_eq!(dynamic_to_json(&json_to_dynamic(&v), 3), Some(v.clone()));
        assert_eq!(dynamic_to_json(&json_to_dynamic(&v), 2), None);
    }
}
