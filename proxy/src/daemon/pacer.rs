//! When a sync may run: kube-proxy's `BoundedFrequencyRunner` pacing
//! (`pkg/util/async`), without its maximum interval (the daemon's periodic
//! resync is a separate timer).
//!
//! A token bucket: `burst` tokens, one refilled every `min_interval`
//! (`minSyncPeriod`), one taken by each sync. A change that finds a token
//! syncs at once; otherwise it waits for the next token, and every change
//! that arrives meanwhile shares that sync. kube-proxy runs its syncs this
//! way with a burst of 2, so a lone change after a quiet spell costs no
//! waiting at all, while a stream of changes is held to one sync per
//! `minSyncPeriod`.
use std::time::{Duration, Instant};

/// kube-proxy's `burstSyncs` for both rule modes.
pub const BURST: u32 = 2;

/// The token bucket (see the module docs). Pure: callers pass the clock.
#[derive(Debug, Clone)]
pub struct SyncPacer {
    min_interval: Duration,
    burst: f64,
    /// Tokens as of `updated`, at most `burst`.
    tokens: f64,
    updated: Instant,
}

impl SyncPacer {
    /// A full bucket at `now`: the first two syncs run at once.
    pub fn new(min_interval: Duration, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            min_interval,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    fn tokens_at(&self, now: Instant) -> f64 {
        if self.min_interval.is_zero() {
            return self.burst;
        }
        let refilled = now.saturating_duration_since(self.updated).as_secs_f64()
            / self.min_interval.as_secs_f64();
        (self.tokens + refilled).min(self.burst)
    }

    /// How long a sync wanted at `now` must wait for a token (zero: none).
    pub fn delay(&self, now: Instant) -> Duration {
        let missing = 1.0 - self.tokens_at(now);
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            self.min_interval.mul_f64(missing)
        }
    }

    /// Takes the token of a sync starting at `now` (after waiting
    /// [`Self::delay`]; a sync started early leaves the bucket empty, it
    /// never borrows).
    pub fn take(&mut self, now: Instant) {
        self.tokens = (self.tokens_at(now) - 1.0).max(0.0);
        self.updated = now;
    }
}

/// Sleeps until `pacer` has a token for a sync, and takes it: the daemon
/// loops' one use of the clock.
pub async fn wait_for_token(pacer: &mut SyncPacer) {
    let wait = pacer.delay(Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    pacer.take(Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lone_change_after_a_quiet_spell_syncs_at_once() {
        let t0 = Instant::now();
        let mut p = SyncPacer::new(1000 * MS, BURST, t0);
        assert_eq!(p.delay(t0), Duration::ZERO);
        p.take(t0);
        // A long quiet spell refills the bucket.
        let later = t0 + 10 * 1000 * MS;
        assert_eq!(p.delay(later), Duration::ZERO);
    }

    #[test]
    fn a_stream_of_changes_gets_a_burst_then_one_sync_per_min_interval() {
        let t0 = Instant::now();
        let mut p = SyncPacer::new(1000 * MS, BURST, t0);
        // Two syncs in a row (kube-proxy's burstSyncs = 2)...
        for _ in 0..2 {
            assert_eq!(p.delay(t0), Duration::ZERO);
            p.take(t0);
        }
        // ...then the third waits a whole interval.
        assert_eq!(p.delay(t0), 1000 * MS);
        let t1 = t0 + 250 * MS;
        assert_eq!(p.delay(t1), 750 * MS);
        let t2 = t0 + 1000 * MS;
        assert_eq!(p.delay(t2), Duration::ZERO);
        p.take(t2);
        // And the one after that waits again: no saving up past the burst.
        assert_eq!(p.delay(t2), 1000 * MS);
    }

    #[test]
    fn the_bucket_never_holds_more_than_the_burst() {
        let t0 = Instant::now();
        let mut p = SyncPacer::new(10 * MS, BURST, t0);
        let t1 = t0 + 3600 * 1000 * MS;
        for _ in 0..2 {
            p.take(t1);
        }
        assert_eq!(p.delay(t1), 10 * MS);
    }

    #[test]
    fn a_sync_started_before_its_token_leaves_the_bucket_empty_not_negative() {
        let t0 = Instant::now();
        let mut p = SyncPacer::new(100 * MS, 1, t0);
        p.take(t0);
        p.take(t0); // a full resync does not wait for a token
        assert_eq!(p.delay(t0), 100 * MS);
    }

    #[test]
    fn a_zero_min_interval_never_waits() {
        let t0 = Instant::now();
        let mut p = SyncPacer::new(Duration::ZERO, BURST, t0);
        for _ in 0..10 {
            p.take(t0);
            assert_eq!(p.delay(t0), Duration::ZERO);
        }
    }
}
