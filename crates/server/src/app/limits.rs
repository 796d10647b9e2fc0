//! Limits that keep one client from wearing the service down: failed
//! sign-ins and bad tokens per source address, and deliveries per
//! credential. Both are per process (each replica counts its own), which
//! bounds an attacker per replica; nothing about them needs to be shared.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Counts authentication failures per source address in fixed windows. An
/// address that reaches the limit is refused every authentication, good
/// token or not, until its window ends: a guesser cannot keep guessing.
///
/// (A window counter rather than `governor`: it must answer "is this
/// address blocked?" without spending a cell, and count only failures.)
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    entries: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Addresses remembered before expired windows are swept.
const SWEEP_AT: usize = 10_000;

impl FailureLimiter {
    /// `max` failures per `window`; 0 turns the limit off.
    pub fn new(max: u32, window: Duration) -> FailureLimiter {
        FailureLimiter {
            max,
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long `source` must wait, if it is blocked now.
    pub fn blocked(&self, source: &str) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let entries = self.entries.lock().expect("limiter poisoned");
        let (start, failures) = entries.get(source)?;
        let left = self.window.checked_sub(start.elapsed())?;
        (*failures >= self.max).then_some(left)
    }

    /// Counts one failed authentication from `source`.
    pub fn failed(&self, source: &str) {
        if self.max == 0 {
            return;
        }
        let mut entries = self.entries.lock().expect("limiter poisoned");
        if entries.len() >= SWEEP_AT {
            let window = self.window;
            entries.retain(|_, (start, _)| start.elapsed() < window);
        }
        let now = Instant::now();
        let entry = entries.entry(source.to_string()).or_insert((now, 0));
        if entry.0.elapsed() >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Deliveries per credential: a token bucket each, so a flood to one
/// credential is refused early (before any lookup or signature check) and
/// the others keep their share.
pub struct IngressLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl IngressLimiter {
    /// `per_second` sustained, bursts of twice that; 0 turns it off.
    pub fn new(per_second: u32) -> IngressLimiter {
        IngressLimiter {
            limiter: NonZeroU32::new(per_second).map(|rate| {
                let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 is not 0"));
                RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
            }),
        }
    }

    /// Takes one delivery's place; how long to wait when there is none.
    pub fn check(&self, credential: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&credential.to_string())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets credentials whose buckets are full again (call now and then).
    pub fn sweep(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_at_the_limit_until_its_window_ends() {
        let l = FailureLimiter::new(3, Duration::from_millis(200));
        for _ in 0..2 {
            l.failed("10.0.0.1");
        }
        assert!(l.blocked("10.0.0.1").is_none());
        l.failed("10.0.0.1");
        let wait = l.blocked("10.0.0.1").expect("blocked at the third failure");
        assert!(wait <= Duration::from_millis(200));
        assert!(l.blocked("10.0.0.2").is_none(), "other addresses are not");
        std::thread::sleep(Duration::from_millis(220));
        assert!(
            l.blocked("10.0.0.1").is_none(),
            "free again after the window"
        );
        assert!(FailureLimiter::new(0, Duration::from_secs(60))
            .blocked("x")
            .is_none());
    }

    #[test]
    fn one_credential_flooded_leaves_the_others_their_share() {
        let l = IngressLimiter::new(5);
        let passed = (0..50).filter(|_| l.check("cred_a").is_ok()).count();
        assert_eq!(passed, 10, "a burst of twice the rate, then refused");
        assert!(l.check("cred_a").unwrap_err() > Duration::ZERO);
        assert!(l.check("cred_b").is_ok(), "another credential is untouched");
        assert!((0..1000).all(|_| IngressLimiter::new(0).check("x").is_ok()));
    }
}
