//! Every signature scheme of `services::verify` (Twilio, Stripe, GitHub,
//! Slack, Shopify, Standard Webhooks, SendGrid, generic HMAC), through the
//! public `verify` entry point, with arbitrary headers, body, URL, receipt
//! time, secret (`@secret`, none when absent) and, for the generic scheme,
//! arbitrary scheme fields. Input format: see `src/lib.rs`.
//!
//! Beyond "never panics" it checks the module's promise that a rejection's
//! text never shows the secret: when the text contains the secret, the same
//! request verified with an unrelated secret of the same length must give a
//! text that contains it too (the secret was only a substring of the fixed
//! text, a header name or a number, as a fuzzer likes to make it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use services::verify::verify;

fuzz_target!(|data: &[u8]| {
    let Some(case) = latchkey_fuzz::decode(data) else {
        return;
    };
    let spec = case.signature_spec();
    let secret = case.get("secret");
    let outcome = verify(
        &spec,
        secret.map(|s| SecretString::from(s.to_string())).as_ref(),
        &case.req,
    );
    let (Err(rejection), Some(secret)) = (outcome, secret) else {
        return;
    };
    let _ = rejection.code();
    let text = rejection.to_string();
    if !secret.is_empty() && text.contains(secret) {
        // The first character the secret does not hold (a finite secret
        // cannot hold them all).
        let filler = (1u32..)
            .filter_map(char::from_u32)
            .find(|c| !secret.contains(*c))
            .expect("some character is not in the secret");
        let other = SecretString::from(filler.to_string().repeat(secret.chars().count()));
        let other_text = verify(&spec, Some(&other), &case.req)
            .err()
            .map(|r| r.to_string())
            .unwrap_or_default();
        assert!(
            other_text.contains(secret),
            "rejection text shows the secret: {text:?}"
        );
    }
});
