//! Every webhook parser of `services::parse` (Stripe, GitHub, Slack, Twilio,
//! Standard Webhooks with an `@app_user_id` expression, and `json_events`
//! with `@event_type`, `@app_user_id`, `@delivery_id` and an `@echo` /
//! `@when` / `@equals` handshake), through the public `parse_webhook` entry
//! point. Input format: see `src/lib.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use services::parse::{parse_webhook, WebhookOutcome};

fuzz_target!(|data: &[u8]| {
    let Some(case) = latchkey_fuzz::decode(data) else {
        return;
    };
    let spec = case.webhook_parser_spec();
    if let Ok(WebhookOutcome::Event(event)) = parse_webhook(&spec, &case.req) {
        // The request was verified before parsing: built-in parsers always
        // say so.
        assert!(event.valid_request);
        assert!(!event.event_type.is_empty());
    }
});
