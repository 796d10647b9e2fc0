//! Both action callback parsers of `services::parse` (Slack interactivity,
//! `json_action` with `@action_type`, `@action_id`, `@value`,
//! `@app_user_id`, `@response_url`, `@delivery_id`), through the public
//! `parse_action` entry point. Input format: see `src/lib.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(case) = latchkey_fuzz::decode(data) else {
        return;
    };
    let spec = case.action_parser_spec();
    if let Ok(action) = services::parse::parse_action(&spec, &case.req) {
        assert!(action.event.valid_request);
        assert!(!action.event.event_type.is_empty());
    }
});
