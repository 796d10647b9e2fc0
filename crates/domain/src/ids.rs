//! Record ids: a short type prefix and a ULID, so ids sort by creation time
//! (the stable order of every list) and say what they name.
//!
//! Within one process ids strictly increase: two records one replica made
//! in the same millisecond (an update and then a delete) still list in the
//! order they were made. Ids are not secrets, but a credential's id is the
//! public part of its webhook URL, so an id must not tell the next one: an id
//! made in the same millisecond as the last one steps past it by a random
//! amount of up to 2^40, not by one. Records from different replicas sort
//! by their clocks, and within one millisecond in no defined order.

use std::sync::{Mutex, PoisonError};

use ulid::Ulid;

/// The largest step past the last id: 40 random bits, so guessing the id
/// made after a known one takes about 2^39 tries.
const STEP_BITS: u32 = 40;

/// The last id this process made.
static LAST: Mutex<Ulid> = Mutex::new(Ulid(0));

fn next_ulid() -> Ulid {
    let fresh = Ulid::new();
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    let next = if fresh > *last {
        fresh
    } else {
        // The same millisecond (or the clock stepped back): past the last
        // id by a random step. A carry into the timestamp only dates the id
        // a millisecond later. Only the end of ULID time has no room.
        let step = (fresh.random() & ((1u128 << STEP_BITS) - 1)) + 1;
        last.0.checked_add(step).map_or(fresh, Ulid)
    };
    *last = next;
    next
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
    fn ids_made_one_after_another_on_different_threads_sort_in_that_order() {
        // A request's writes can run on any of the runtime's threads: the
        // order is the process's, not a thread's.
        let ids: Vec<String> = (0..2_000)
            .map(|_| std::thread::spawn(credential).join().unwrap())
            .collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn an_id_does_not_tell_the_next_one() {
        let ids: Vec<Ulid> = (0..20_000).map(|_| next_ulid()).collect();
        let gaps: Vec<u128> = ids.windows(2).map(|p| p[1].0 - p[0].0).collect();
        let same_ms = ids
            .windows(2)
            .filter(|p| p[0].timestamp_ms() == p[1].timestamp_ms())
            .count();
        assert!(same_ms > 1_000, "only {same_ms} ids shared a millisecond");
        // A counter steps by one; a random step of up to 2^40 is 1 about
        // once in 2^40 ids.
        assert!(gaps.iter().all(|&g| g > 1), "an id stepped by one");
        let mut distinct = gaps.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > gaps.len() * 9 / 10, "the steps repeat");
    }
}
