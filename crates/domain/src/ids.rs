//! Record ids: a short type prefix and a ULID, so ids sort by creation time
//! (the stable order of every list) and say what they name.

use ulid::Ulid;

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Ulid::new().to_string().to_lowercase())
}

pub fn credential() -> String {
    new_id("cred")
}
pub fn tenant() -> String {
    new_id("ten")
}
pub fn token() -> String {
    new_id("tok")
}
pub fn audit() -> String {
    new_id("aud")
}

/// Whether `s` looks like an id this module made with `prefix` (cheap check
/// before a lookup; lookups still decide).
pub fn is_id(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|r| r.len() == 26 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}
