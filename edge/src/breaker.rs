//! A circuit breaker per upstream source, as a state machine that takes the time as input:
//! after `threshold` consecutive failures the source is skipped for `cool_down`, then one trial
//! request is let through (half-open); a success closes the breaker, a failure opens it again.

use std::time::{Duration, Instant};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests flow.
    Closed,
    /// Requests are refused until the instant.
    Open(Instant),
    /// One trial request is in flight.
    HalfOpen,
}

/// One source's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cool_down: Duration,
    failures: u32,
    state: State,
}

impl Breaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            failures: 0,
            state: State::Closed,
        }
    }

    /// Whether a request may go to this source now; moves an open breaker whose cool-down has
    /// passed to half-open and lets exactly one request through.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::HalfOpen => false,
            State::Open(until) if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open(_) => false,
        }
    }

    /// Records a successful request.
    pub fn success(&mut self) {
        self.failures = 0;
        self.state = State::Closed;
    }

    /// Records a failed request (connect error, timeout, 5xx, bad body).
    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.state == State::HalfOpen || self.failures >= self.threshold {
            self.state = State::Open(now + self.cool_down);
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_recovers_through_half_open() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        assert!(b.allow(t0));
        b.failure(t0);
        b.failure(t0);
        assert!(b.allow(t0), "two failures are below the threshold");
        b.failure(t0);
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        // After the cool-down exactly one trial goes through.
        assert!(b.allow(t0 + Duration::from_secs(10)));
        assert!(!b.allow(t0 + Duration::from_secs(10)));
        // A failed trial opens it again at once.
        b.failure(t0 + Duration::from_secs(10));
        assert!(!b.allow(t0 + Duration::from_secs(19)));
        assert!(b.allow(t0 + Duration::from_secs(20)));
        b.success();
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow(t0 + Duration::from_secs(20)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.failure(t0);
        b.success();
        b.failure(t0);
        assert!(b.allow(t0));
    }
}
