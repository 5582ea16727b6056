//! Simulcast layer selection for one subscriber's video stream: which layer of a publisher's
//! track it should receive, from the subscriber's bandwidth estimate, the layers' measured
//! bitrates and heights, the largest height it asked for, and how many top layers overload
//! sheds. Pure: time and measurements in, a target layer out.
//!
//! Rules:
//! - the ideal layer is the highest one whose bitrate fits in 0.9 × the estimate, whose
//!   height is at most the requested one, and which overload has not shed; the lowest layer
//!   when none fits (a subscriber always gets video);
//! - a layer the publisher stopped sending while it was asked for ([`LayerView::stalled`]: a
//!   browser drops its top layers when its uplink or its CPU cannot carry them) is never
//!   chosen, nor one whose frame rate is under half the rate of the layer it would replace
//!   (an encoder short of CPU sends its top layer at a few frames a second: 360 lines at 30
//!   frames a second beat 720 at 3);
//! - without an estimate (a subscriber without TWCC or REMB) only the height and shedding
//!   count;
//! - down at once when the ideal layer has been lower for [`DOWN_AFTER`], up only after
//!   it has been higher for [`UP_AFTER`] (a probe's short-lived estimate does not flap).
//!
//! Layers are indexed from the lowest (0) up.

use std::time::{Duration, Instant};

/// How long the ideal layer must stay below the target before switching down.
pub const DOWN_AFTER: Duration = Duration::from_millis(300);
/// How long the ideal layer must stay above the target before switching up.
pub const UP_AFTER: Duration = Duration::from_secs(3);
/// How long a layer asked of its publisher may send nothing before it counts as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(2);
/// How long a stalled layer is left alone before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// The share of the estimate video may use.
pub const HEADROOM: f64 = 0.9;

/// What is known of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerView {
    /// Measured bitrate (bits/s), if it has been received for long enough.
    pub bps: Option<u64>,
    /// Frame height from its last keyframe.
    pub height: Option<u32>,
    /// Measured frames per second, with the bitrate.
    pub fps: Option<u32>,
    /// Asked of the publisher, yet silent for a while: not to be chosen.
    pub stalled: bool,
}

/// A guess for a layer not measured yet (paused or just started): 150 kbit/s for the lowest,
/// three times more per layer up (roughly what browsers send at a quarter, half and full
/// 720p).
pub fn nominal_bps(layer: usize) -> u64 {
    150_000u64.saturating_mul(3u64.saturating_pow(layer.min(8) as u32))
}

/// The bitrate to plan with for `layer`.
pub fn planned_bps(layers: &[LayerView], layer: usize) -> u64 {
    layers
        .get(layer)
        .and_then(|l| l.bps)
        .unwrap_or_else(|| nominal_bps(layer))
}

/// The highest layer that fits (see the module's rules).
pub fn ideal(
    layers: &[LayerView],
    budget_bps: Option<u64>,
    max_height: Option<u32>,
    shed: u8,
) -> usize {
    let Some(top) = layers.len().checked_sub(1) else {
        return 0;
    };
    let cap = top.saturating_sub(usize::from(shed));
    // The lowest layer still sent (the lowest when none is).
    let mut best = (0..=cap).find(|&i| !layers[i].stalled).unwrap_or(0);
    for i in best + 1..=cap {
        let l = layers[i];
        if l.stalled || !frame_rate_holds(l.fps, layers[best].fps) {
            // Not chosen; a higher layer may still be.
            continue;
        }
        if let (Some(max), Some(h)) = (max_height, l.height)
            && h > max
        {
            break;
        }
        // A layer of unknown height above one already at the requested size is no better.
        if let (Some(max), None, Some(below)) = (max_height, l.height, layers[best].height)
            && below >= max
        {
            break;
        }
        if let Some(b) = budget_bps
            && planned_bps(layers, i) as f64 > HEADROOM * b as f64
        {
            break;
        }
        best = i;
    }
    best
}

/// Whether a layer sending `fps` frames a second may replace one sending `below` (unknown
/// rates do not count against it).
fn frame_rate_holds(fps: Option<u32>, below: Option<u32>) -> bool {
    match (fps, below) {
        (Some(f), Some(b)) => f.saturating_mul(2) >= b,
        _ => true,
    }
}

/// One stream's target layer, with hysteresis.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    target: Option<usize>,
    /// Since when the ideal layer has been above (or below) the target.
    above_since: Option<Instant>,
    below_since: Option<Instant>,
}

impl Selector {
    /// The target layer, once one was chosen.
    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// Takes the ideal layer now; returns the new target when it changes (the first call
    /// always chooses).
    pub fn update(&mut self, now: Instant, ideal: usize) -> Option<usize> {
        let Some(cur) = self.target else {
            self.target = Some(ideal);
            return Some(ideal);
        };
        if ideal > cur {
            self.below_since = None;
            let since = *self.above_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= UP_AFTER {
                self.above_since = None;
                self.target = Some(ideal);
                return Some(ideal);
            }
        } else if ideal < cur {
            self.above_since = None;
            let since = *self.below_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= DOWN_AFTER {
                self.below_since = None;
                self.target = Some(ideal);
                return Some(ideal);
            }
        } else {
            self.above_since = None;
            self.below_since = None;
        }
        None
    }

    /// Forces the target (overload shedding takes effect at once).
    pub fn force(&mut self, layer: usize) {
        self.target = Some(layer);
        self.above_since = None;
        self.below_since = None;
    }
}

/// A bitrate and frame-rate meter over windows of about a second (packets in, bits/s and
/// frames/s out).
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    frames: u64,
    last_bps: Option<u64>,
    last_fps: Option<u32>,
    /// The RTP timestamp of the last packet (a new one starts a frame).
    last_ts: Option<u32>,
    /// When the last packet came.
    last_at: Option<Instant>,
}

/// The window of a [`RateMeter`].
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

impl RateMeter {
    /// One packet of `bytes` with RTP timestamp `ts`, received `now`.
    pub fn add(&mut self, now: Instant, bytes: u64, ts: u32) {
        if self
            .last_at
            .is_some_and(|t| now.saturating_duration_since(t) >= RATE_WINDOW)
        {
            // The first packet after a pause (dynacast, or the publisher stopped): a window
            // over the pause would measure next to nothing. The last figures stand until a
            // window of sending is measured.
            self.window_start = Some(now);
            self.bytes = 0;
            self.frames = 0;
        }
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let micros = elapsed.as_micros().max(1) as u64;
            self.last_bps = Some(self.bytes.saturating_mul(8).saturating_mul(1_000_000) / micros);
            let fps = self
                .frames
                .saturating_mul(1_000_000)
                .saturating_add(micros / 2)
                / micros;
            self.last_fps = Some(u32::try_from(fps).unwrap_or(u32::MAX));
            self.window_start = Some(now);
            self.bytes = 0;
            self.frames = 0;
        }
        self.bytes = self.bytes.saturating_add(bytes);
        if self.last_ts != Some(ts) {
            self.frames = self.frames.saturating_add(1);
            self.last_ts = Some(ts);
        }
        self.last_at = Some(self.last_at.map_or(now, |t| t.max(now)));
    }

    /// The last full window's bitrate (kept while the layer is paused).
    pub fn bps(&self) -> Option<u64> {
        self.last_bps
    }

    /// The last full window's frame rate (kept while the layer is paused).
    pub fn fps(&self) -> Option<u32> {
        self.last_fps
    }

    /// When the last packet came.
    pub fn last_at(&self) -> Option<Instant> {
        self.last_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn three() -> Vec<LayerView> {
        vec![
            LayerView {
                bps: Some(150_000),
                height: Some(180),
                ..LayerView::default()
            },
            LayerView {
                bps: Some(500_000),
                height: Some(360),
                ..LayerView::default()
            },
            LayerView {
                bps: Some(1_500_000),
                height: Some(720),
                ..LayerView::default()
            },
        ]
    }

    #[test]
    fn the_budget_and_the_requested_height_choose() {
        let l = three();
        assert_eq!(ideal(&l, None, None, 0), 2);
        assert_eq!(ideal(&l, Some(5_000_000), None, 0), 2);
        assert_eq!(ideal(&l, Some(1_600_000), None, 0), 1, "1.5M > 0.9 × 1.6M");
        assert_eq!(ideal(&l, Some(300_000), None, 0), 0);
        assert_eq!(ideal(&l, Some(10_000), None, 0), 0, "always some video");
        assert_eq!(ideal(&l, None, Some(360), 0), 1);
        assert_eq!(ideal(&l, None, Some(359), 0), 0);
        assert_eq!(ideal(&l, Some(5_000_000), Some(100), 0), 0);
        assert_eq!(ideal(&l, None, None, 1), 1, "overload sheds the top layer");
        assert_eq!(ideal(&l, None, None, 5), 0);
        assert_eq!(ideal(&[], None, None, 0), 0);
    }

    #[test]
    fn unknown_layers_are_planned_at_nominal_rates() {
        let l = vec![LayerView::default(); 3];
        assert_eq!(ideal(&l, Some(600_000), None, 0), 1);
        assert_eq!(ideal(&l, Some(2_000_000), None, 0), 2);
    }

    #[test]
    fn down_fast_up_slowly() {
        let t0 = Instant::now();
        let mut s = Selector::default();
        assert_eq!(s.update(t0, 2), Some(2));
        // The budget drops: down after DOWN_AFTER, not before.
        assert_eq!(s.update(t0 + Duration::from_millis(100), 0), None);
        assert_eq!(s.update(t0 + Duration::from_millis(399), 0), None);
        assert_eq!(s.update(t0 + Duration::from_millis(400), 0), Some(0));
        // A short rise does not switch up; a held one does.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(s.update(t1, 2), None);
        assert_eq!(s.update(t1 + Duration::from_secs(1), 0), None);
        assert_eq!(s.update(t1 + Duration::from_secs(2), 2), None);
        assert_eq!(s.update(t1 + Duration::from_secs(4), 2), None);
        assert_eq!(s.update(t1 + Duration::from_secs(5), 2), Some(2));
        assert_eq!(s.target(), Some(2));
    }

    #[test]
    fn the_meter_measures_per_window() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for i in 0..=100u64 {
            // Four packets a frame.
            m.add(
                t0 + Duration::from_millis(i * 10),
                1250,
                (i / 4) as u32 * 3000,
            );
        }
        // 100 packets of 1250 bytes in one second: 1 Mbit/s, in 25 frames.
        assert_eq!(m.bps(), Some(1_000_000));
        assert_eq!(m.fps(), Some(25));
        assert_eq!(m.last_at(), Some(t0 + Duration::from_secs(1)));
        // Paused for 20 s, then sending again at half the rate: the window over the pause
        // measures nothing (it would read nearly 0 frames/s); the next full one does.
        let t1 = t0 + Duration::from_secs(21);
        for i in 0..=50u64 {
            m.add(
                t1 + Duration::from_millis(i * 20),
                1250,
                1_000_000 + (i / 4) as u32 * 3000,
            );
            if i < 50 {
                assert_eq!(m.fps(), Some(25), "at {i}");
                assert_eq!(m.bps(), Some(1_000_000));
            }
        }
        assert_eq!(m.fps(), Some(13));
        assert_eq!(m.bps(), Some(500_000));
    }

    #[test]
    fn a_stalled_layer_is_never_chosen() {
        let mut l = three();
        l[2].stalled = true;
        assert_eq!(ideal(&l, None, None, 0), 1);
        assert_eq!(ideal(&l, Some(5_000_000), None, 0), 1);
        l[1].stalled = true;
        assert_eq!(ideal(&l, None, None, 0), 0);
        // The lowest one stalled: the lowest one sent, whatever the budget.
        let mut l = three();
        l[0].stalled = true;
        assert_eq!(ideal(&l, Some(10_000), None, 0), 1);
        assert_eq!(ideal(&l, None, None, 0), 2);
        // Nothing sent at all: still the lowest (a subscriber always has a layer).
        l[1].stalled = true;
        l[2].stalled = true;
        assert_eq!(ideal(&l, None, None, 0), 0);
        // A stalled middle layer does not hide the top one.
        let mut l = three();
        l[1].stalled = true;
        assert_eq!(ideal(&l, None, None, 0), 2);
    }

    #[test]
    fn a_layer_at_under_half_the_frame_rate_is_not_chosen() {
        let mut l = three();
        l[0].fps = Some(30);
        l[1].fps = Some(30);
        l[2].fps = Some(4);
        assert_eq!(
            ideal(&l, None, None, 0),
            1,
            "720 lines at 4 fps lose to 360 at 30"
        );
        l[2].fps = Some(15);
        assert_eq!(ideal(&l, None, None, 0), 2, "half the rate is still enough");
        l[2].fps = None;
        assert_eq!(
            ideal(&l, None, None, 0),
            2,
            "an unmeasured rate does not count"
        );
        // Compared with the layer it would replace, not with the one below it.
        l[1].fps = Some(5);
        l[2].fps = Some(10);
        assert_eq!(ideal(&l, None, None, 0), 0, "both under half of 30");
    }

    proptest! {
        /// Whatever the estimates, the target never exceeds what the requested height and
        /// shedding allow, and a switch up only follows UP_AFTER of a higher ideal.
        #[test]
        fn the_target_respects_height_and_shedding(
            steps in prop::collection::vec((0u64..3_000_000, 0u64..400, 0u8..3, prop::option::of(100u32..800)), 1..200)
        ) {
            let l = three();
            let t0 = Instant::now();
            let mut now = t0;
            let mut s = Selector::default();
            let mut higher_since: Option<Instant> = None;
            for (budget, dt, shed, max_h) in steps {
                now += Duration::from_millis(dt);
                let i = ideal(&l, Some(budget), max_h, shed);
                prop_assert!(i <= 2usize.saturating_sub(usize::from(shed)));
                if let Some(h) = max_h {
                    prop_assert!(i == 0 || l[i].height.is_some_and(|x| x <= h));
                }
                let before = s.target();
                if before.is_some_and(|b| i > b) {
                    higher_since.get_or_insert(now);
                } else {
                    higher_since = None;
                }
                if let (Some(b), Some(new)) = (before, s.update(now, i))
                    && new > b
                {
                    prop_assert!(higher_since.is_some_and(|t| now.saturating_duration_since(t) >= UP_AFTER));
                    higher_since = None;
                }
            }
        }
    }
}
