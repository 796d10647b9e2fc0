//! Value expressions and the storage-free user id mappers: for each `@expr`
//! setting, `domain::spec::check_expr` (the syntax check), `services::parse::
//! eval_expr` against the request (JSONPath into the body, `header:`,
//! `form:`, `query:`, `literal:`), and `map_user` with `payload_user` on
//! that expression; `map_user` with `identity` on `@app_user_id`. The body
//! is JSON, or a form read as an object. Input format: see `src/lib.rs`.
#![no_main]

use domain::spec::ServiceSpec;
use libfuzzer_sys::fuzz_target;
use services::parse::{eval_expr, map_user};

fuzz_target!(|data: &[u8]| {
    let Some(case) = latchkey_fuzz::decode(data) else {
        return;
    };
    let json = latchkey_fuzz::body_json(&case.req);
    for expr in case.all("expr") {
        let _ = domain::spec::check_expr(expr);
        let _ = eval_expr(expr, &case.req, &json);
        let mapper = ServiceSpec::PayloadUser {
            path: expr.to_string(),
        };
        if let Ok(Some(user)) = map_user(&mapper, None, &json) {
            assert!(!user.is_empty(), "a mapper never gives an empty user id");
        }
    }
    let app_user_id = case.get("app_user_id");
    assert_eq!(
        map_user(&ServiceSpec::Identity, app_user_id, &json),
        Ok(app_user_id.map(str::to_string))
    );
});
