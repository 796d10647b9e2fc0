//! Record ids: a short type prefix and a ULID, so ids sort by creation time
//! (the stable order of every list) and say what they name.
//!
//! One process hands ULIDs out from a single monotonic generator: two ids made
//! in the same millisecond still sort in the order they were made, so a list
//! ordered by id shows a replica's changes in the order they happened. Ids
//! made by different replicas in the same millisecond sort arbitrarily among
//! themselves. Ids are names, never secrets: nothing is granted by knowing one.

use std::sync::{Mutex, PoisonError};

use ulid::{Generator, Ulid};

static GENERATOR: Mutex<Generator> = Mutex::new(Generator::new());

fn next_ulid() -> Ulid {
    GENERATOR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .generate()
        // Only after 2^80 ids in one millisecond; a fresh random one is then
        // the best there is.
        .unwrap_or_else(|_| Ulid::new())
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", next_ulid().to_string().to_lowercase())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_one_after_another_sort_in_that_order() {
        // Thousands of ids fall in each millisecond here; random ULIDs would
        // put many of them out of order.
        let ids: Vec<String> = (0..20_000).map(|_| audit()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        assert!(ids.iter().all(|id| is_id("aud", id)));
    }

    #[test]
    fn ids_from_many_threads_are_all_distinct() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..5_000).map(|_| credential()).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let made = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), made);
    }
}
