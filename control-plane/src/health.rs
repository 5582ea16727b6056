//! The health verdict of one node, with hysteresis (Traffic Monitor style): a node goes down
//! after `down_after` failed checks in a row and comes back after `up_after` good ones, so one
//! lost poll does not move traffic and a flapping node does not take it back at once. Pure:
//! the monitor feeds it check results.

/// A change of verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Up,
    Down,
}

/// The tracker of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    up: bool,
    good_in_a_row: u32,
    bad_in_a_row: u32,
    down_after: u32,
    up_after: u32,
}

impl Tracker {
    /// A new node counts as down until it passes `up_after` checks.
    pub fn new(down_after: u32, up_after: u32) -> Self {
        Self {
            up: false,
            good_in_a_row: 0,
            bad_in_a_row: 0,
            down_after: down_after.max(1),
            up_after: up_after.max(1),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check; says whether the verdict changed.
    pub fn observe(&mut self, ok: bool) -> Option<Change> {
        if ok {
            self.good_in_a_row = self.good_in_a_row.saturating_add(1);
            self.bad_in_a_row = 0;
            if !self.up && self.good_in_a_row >= self.up_after {
                self.up = true;
                return Some(Change::Up);
            }
        } else {
            self.bad_in_a_row = self.bad_in_a_row.saturating_add(1);
            self.good_in_a_row = 0;
            if self.up && self.bad_in_a_row >= self.down_after {
                self.up = false;
                return Some(Change::Down);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis() {
        let mut t = Tracker::new(3, 2);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Change::Up));
        // Two failures are not enough; a success in between resets the count.
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Change::Down));
        assert_eq!(t.observe(false), None);
        // Back up only after two good checks in a row.
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Change::Up));
        assert!(t.is_up());
    }
}
