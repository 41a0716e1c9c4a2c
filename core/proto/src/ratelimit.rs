//! A token bucket over bytes, sans-IO: the caller passes the time.
//!
//! Relays give one to every circuit and one to every peer link, so a single
//! client cannot take a relay's whole capacity from the others.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second; 0 means unlimited.
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket that refills `rate` bytes a second up to `burst`, full at `now`.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `bytes` if there are enough tokens at `now`; false means drop.
    pub fn admit(&mut self, now: Instant, bytes: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        if elapsed >= Duration::from_micros(100) {
            let refill = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
            self.tokens = (self.tokens.saturating_add(refill)).min(self.burst);
            self.last = now;
        }
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_rate_over_time_and_no_more() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, 100_000, t0);
        let mut admitted = 0u64;
        // 2 s of offered load at 10× the rate, in 1 ms steps.
        for ms in 0..2000u64 {
            let now = t0 + Duration::from_millis(ms);
            for _ in 0..10 {
                if b.admit(now, 1000) {
                    admitted += 1000;
                }
            }
        }
        // Burst plus two seconds of rate, give or take one step.
        assert!((2_000_000..=2_110_000).contains(&admitted), "{admitted}");
        let mut open = TokenBucket::new(0, 0, t0);
        assert!(open.admit(t0, u64::MAX), "rate 0 is unlimited");
    }
}
