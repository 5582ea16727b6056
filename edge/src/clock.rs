//! The edge's one clock. Every decision that depends on time (freshness, stale windows,
//! token expiry, purges, circuit breakers, the RAM policy's `now`) reads it from the
//! [`Clock`] the node was built with, so that tests can move time instead of waiting for it.
//!
//! [`Clock::system`] reads the system clocks; [`Clock::manual`] starts at the real time and
//! moves only when [`ManualClock::advance`] is called. Durations measured for metrics and the
//! access log, and the timeouts on sockets, stay on the real clocks: they measure IO.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A source of the current time: the system's, or a manual one for tests. Cheap to clone
/// and to read (no allocation, no lock).
#[derive(Debug, Clone, Default)]
pub struct Clock(Inner);

#[derive(Debug, Clone, Default)]
enum Inner {
    #[default]
    System,
    Manual(Arc<ManualClock>),
}

/// A clock that stands still until it is advanced.
#[derive(Debug)]
pub struct ManualClock {
    instant: Instant,
    wall: SystemTime,
    /// Nanoseconds advanced since the clock was made.
    offset: AtomicU64,
}

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset.fetch_add(nanos, Ordering::SeqCst);
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset.load(Ordering::SeqCst))
    }
}

impl Clock {
    /// The system's clocks.
    pub fn system() -> Self {
        Self(Inner::System)
    }

    /// A clock that starts now and moves only when the returned handle advances it.
    pub fn manual() -> (Self, Arc<ManualClock>) {
        let manual = Arc::new(ManualClock {
            instant: Instant::now(),
            wall: SystemTime::now(),
            offset: AtomicU64::new(0),
        });
        (Self(Inner::Manual(Arc::clone(&manual))), manual)
    }

    /// Monotonic time, for durations and deadlines.
    pub fn now(&self) -> Instant {
        match &self.0 {
            Inner::System => Instant::now(),
            Inner::Manual(m) => m.instant + m.offset(),
        }
    }

    /// Wall-clock time, for dates (`Expires`, `Last-Modified`).
    pub fn system_time(&self) -> SystemTime {
        match &self.0 {
            Inner::System => SystemTime::now(),
            Inner::Manual(m) => m.wall + m.offset(),
        }
    }

    /// Wall-clock time in unix seconds (0 before 1970), for stored freshness and tokens.
    pub fn unix_secs(&self) -> u64 {
        self.system_time()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let (clock, hand) = Clock::manual();
        let (t0, u0, s0) = (clock.now(), clock.unix_secs(), clock.system_time());
        assert_eq!(clock.now(), t0);
        hand.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - t0, Duration::from_secs(90));
        assert_eq!(clock.unix_secs() - u0, 90);
        assert_eq!(
            clock.system_time().duration_since(s0).ok(),
            Some(Duration::from_secs(90))
        );
        // Clones share the hand.
        let other = clock.clone();
        hand.advance(Duration::from_secs(1));
        assert_eq!(other.now() - t0, Duration::from_secs(91));
    }
}
