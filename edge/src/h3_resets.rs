//! The HTTP/3 Rapid Reset defence's decision (CVE-2023-44487's HTTP/3 counterpart): how many
//! request streams a client cancelled within a window, against a limit.
//!
//! A client that opens a request stream and cancels it at once costs the edge a lookup, a
//! response and a log line while it costs the client two frames. HTTP/2 has hyper's
//! `max_pending_accept_reset_streams`; h3 has nothing like it, so the front end counts the
//! cancellations (quinn's count of RESET_STREAM and STOP_SENDING frames received) and asks
//! this state machine, which takes the time as an input and does no IO, whether to close.

use std::time::{Duration, Instant};

/// The window over which cancellations are counted.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Cancelled streams of one connection per fixed window.
#[derive(Debug)]
pub struct ResetWindow {
    limit: u64,
    window: Duration,
    /// When the current window started (none before the first observation).
    start: Option<Instant>,
    /// The running count when the current window started.
    base: u64,
    /// The running count at the previous observation.
    last: u64,
}

impl ResetWindow {
    pub fn new(limit: u64, window: Duration) -> Self {
        Self {
            limit,
            window,
            start: None,
            base: 0,
            last: 0,
        }
    }

    /// Takes the connection's running count of cancelled streams at `now` and says whether
    /// more than the limit were cancelled in the current window. A new window starts from
    /// the count of the previous observation, so cancellations since then are never lost.
    pub fn exceeded(&mut self, now: Instant, cancelled: u64) -> bool {
        match self.start {
            Some(start) if now.saturating_duration_since(start) < self.window => {}
            _ => {
                self.start = Some(now);
                self.base = self.last;
            }
        }
        self.last = self.last.max(cancelled);
        self.last - self.base > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_within_one_window_is_caught() {
        let t0 = Instant::now();
        let mut w = ResetWindow::new(20, WINDOW);
        assert!(!w.exceeded(t0, 0));
        assert!(!w.exceeded(t0 + Duration::from_millis(10), 20));
        assert!(w.exceeded(t0 + Duration::from_millis(20), 21));
    }

    #[test]
    fn a_slow_trickle_never_is() {
        let t0 = Instant::now();
        let mut w = ResetWindow::new(20, WINDOW);
        // Ten cancellations every 10 s, for an hour.
        for i in 0..360u64 {
            assert!(!w.exceeded(t0 + WINDOW * i as u32, 10 * i));
        }
    }

    #[test]
    fn cancellations_between_observations_count_in_the_next_window() {
        let t0 = Instant::now();
        let mut w = ResetWindow::new(20, WINDOW);
        assert!(!w.exceeded(t0, 5));
        // 30 more arrived since the last look; the window has turned but they are counted.
        assert!(w.exceeded(t0 + WINDOW, 35));
    }
}
