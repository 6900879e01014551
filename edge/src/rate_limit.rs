//! Keyed rate limits on top of `governor`, with idle keys evicted so memory stays bounded.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Allows `count` events per `window` per key (a burst of `count`, refilled evenly over the window).
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    /// `None`: unlimited.
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

/// The answer to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// `count == 0` or a zero window means unlimited.
    pub fn new(count: u32, window: Duration) -> Self {
        let limiter = NonZeroU32::new(count)
            .filter(|_| !window.is_zero())
            .and_then(|burst| {
                Quota::with_period(window / burst.get()).map(|quota| quota.allow_burst(burst))
            })
            .map(RateLimiter::keyed);
        Self { limiter }
    }

    /// Counts one event for `key`.
    pub fn check(&self, key: &K) -> Decision {
        match &self.limiter {
            Some(limiter) if limiter.check_key(key).is_err() => Decision::Limited,
            _ => Decision::Allowed,
        }
    }

    /// Forgets keys whose limit is fully replenished: they would behave exactly like new keys.
    pub fn evict_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |limiter| limiter.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_limits_per_key() {
        let limit = KeyedLimit::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(limit.check(&"a"), Decision::Allowed);
        }
        assert_eq!(limit.check(&"a"), Decision::Limited);
        assert_eq!(limit.check(&"b"), Decision::Allowed, "keys are independent");
    }

    #[test]
    fn zero_means_unlimited() {
        let limit = KeyedLimit::new(0, Duration::from_secs(60));
        for _ in 0..1000 {
            assert_eq!(limit.check(&1), Decision::Allowed);
        }
        assert!(limit.is_empty());
    }

    #[test]
    fn refills_over_the_window() {
        let limit = KeyedLimit::new(2, Duration::from_millis(40));
        assert_eq!(limit.check(&"a"), Decision::Allowed);
        assert_eq!(limit.check(&"a"), Decision::Allowed);
        assert_eq!(limit.check(&"a"), Decision::Limited);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while limit.check(&"a") == Decision::Limited {
            assert!(
                std::time::Instant::now() < deadline,
                "the limit never refilled"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn idle_keys_are_evicted() {
        let limit = KeyedLimit::new(5, Duration::from_millis(10));
        for key in 0..100 {
            limit.check(&key);
        }
        assert_eq!(limit.len(), 100);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            limit.evict_idle();
            if limit.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "idle keys were kept");
            std::thread::yield_now();
        }
    }
}
