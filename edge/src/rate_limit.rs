//! Keyed rate limits, with idle keys evicted so memory stays bounded: thread creations per client
//! address on top of `governor`, and the per-thread message budget.

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

    /// Counts one event for `key`; when it is over the limit, how long until one more would fit.
    pub fn check_wait(&self, key: &K) -> Result<(), Duration> {
        use governor::clock::{Clock as _, DefaultClock};
        match &self.limiter {
            Some(limiter) => limiter
                .check_key(key)
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
            None => Ok(()),
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
    fn says_how_long_to_wait() {
        let limit = KeyedLimit::new(2, Duration::from_secs(60));
        assert_eq!(limit.check_wait(&"a"), Ok(()));
        assert_eq!(limit.check_wait(&"a"), Ok(()));
        let wait = limit.check_wait(&"a").expect_err("over the limit");
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "one event comes back every 30 s: {wait:?}"
        );
        assert_eq!(
            KeyedLimit::new(0, Duration::from_secs(60)).check_wait(&"a"),
            Ok(())
        );
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

/// Per-thread message budget (SPEC §3): `count` messages per `window`, a token bucket that is
/// checked before a message is published and charged only once JetStream has accepted it, so a
/// message refused as `busy` costs nothing. (`governor` charges on the check itself and cannot
/// refund, which is why this one is hand-rolled.)
pub struct MessageBudget<K: Hash + Eq + Clone> {
    /// Tokens per bucket (the burst), and the time one token takes to come back.
    burst: f64,
    refill_every: Option<Duration>,
    buckets: std::sync::Mutex<std::collections::HashMap<K, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

impl<K: Hash + Eq + Clone> MessageBudget<K> {
    /// `count == 0` or a zero window means unlimited.
    pub fn new(count: u32, window: Duration) -> Self {
        let refill_every = (count > 0 && !window.is_zero()).then(|| window / count);
        Self {
            burst: f64::from(count),
            refill_every,
            buckets: std::sync::Mutex::default(),
        }
    }

    fn refilled(&self, bucket: Bucket, now: std::time::Instant) -> f64 {
        let Some(every) = self.refill_every else {
            return self.burst;
        };
        let earned = now.duration_since(bucket.at).as_secs_f64() / every.as_secs_f64();
        (bucket.tokens + earned).min(self.burst)
    }

    /// Whether one more message fits, without charging for it.
    pub fn check(&self, key: &K) -> Decision {
        if self.refill_every.is_none() {
            return Decision::Allowed;
        }
        let now = std::time::Instant::now();
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match buckets.get(key) {
            Some(bucket) if self.refilled(*bucket, now) < 1.0 => Decision::Limited,
            _ => Decision::Allowed,
        }
    }

    /// Charges one accepted message.
    pub fn charge(&self, key: &K) {
        if self.refill_every.is_none() {
            return;
        }
        let now = std::time::Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tokens = buckets
            .get(key)
            .map_or(self.burst, |bucket| self.refilled(*bucket, now));
        buckets.insert(
            key.clone(),
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            },
        );
    }

    /// Forgets buckets that have refilled: they would behave exactly like new ones.
    pub fn evict_idle(&self) {
        let now = std::time::Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        buckets.retain(|_, bucket| self.refilled(*bucket, now) < self.burst);
        buckets.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn only_charged_messages_count() {
        let budget = MessageBudget::new(2, Duration::from_secs(60));
        for _ in 0..10 {
            assert_eq!(
                budget.check(&"a"),
                Decision::Allowed,
                "checks alone cost nothing"
            );
        }
        budget.charge(&"a");
        budget.charge(&"a");
        assert_eq!(budget.check(&"a"), Decision::Limited);
        assert_eq!(budget.check(&"b"), Decision::Allowed);
    }

    #[test]
    fn refills_and_evicts() {
        let budget = MessageBudget::new(1, Duration::from_millis(20));
        budget.charge(&"a");
        assert_eq!(budget.check(&"a"), Decision::Limited);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while budget.check(&"a") == Decision::Limited {
            assert!(std::time::Instant::now() < deadline, "never refilled");
            std::thread::yield_now();
        }
        budget.evict_idle();
        assert!(budget.is_empty());
    }

    #[test]
    fn zero_is_unlimited() {
        let budget = MessageBudget::new(0, Duration::from_secs(1));
        budget.charge(&"a");
        assert_eq!(budget.check(&"a"), Decision::Allowed);
        assert!(budget.is_empty());
    }
}
