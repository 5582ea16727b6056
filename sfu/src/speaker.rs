//! The active speaker: audio levels in (RFC 6464, `-127..=0` dBov per packet), the loudest
//! participant out, with hysteresis. Pure: time comes in as an argument.
//!
//! Each participant's loudness (`127 + level`) is smoothed over time (an exponential average
//! with time constant [`TAU`], by elapsed time, not packets; a pause longer than [`GAP`]
//! between packets counts as silence, so a speaker whose encoder sends nothing (DTX) fades). The active speaker changes only when a challenger has been louder
//! by [`MARGIN`] for [`HOLD`], and at most once per [`MIN_INTERVAL`]; nobody becomes the
//! speaker below [`FLOOR`].
//!
//! [`SpeakerDetector::loudest`] ranks publishers for loudest-N audio forwarding: by the same
//! smoothed loudness, those ranked last time with a bonus of [`KEEP_BONUS`] (so two voices
//! about as loud do not swap places at every ranking), ties by peer id; a publisher never
//! heard counts as silent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::room::PeerId;

pub const TAU: Duration = Duration::from_millis(500);
pub const MARGIN: f32 = 6.0;
pub const HOLD: Duration = Duration::from_millis(300);
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// About -97 dBov: quieter than this is silence.
pub const FLOOR: f32 = 30.0;

/// What a publisher ranked among the loudest last time is given over the others, so that
/// voices of about the same loudness keep their places.
pub const KEEP_BONUS: f32 = MARGIN / 2.0;

#[derive(Debug, Clone, Copy)]
struct Level {
    smoothed: f32,
    at: Instant,
}

/// Packets further apart than this mean silence in between (DTX sends none).
pub const GAP: Duration = Duration::from_millis(100);

impl Level {
    /// The smoothed loudness at `now`, silence assumed after a gap since the last sample.
    fn at(self, now: Instant) -> f32 {
        let gap = now.saturating_duration_since(self.at).saturating_sub(GAP);
        self.smoothed * (-gap.as_secs_f32() / TAU.as_secs_f32()).exp()
    }
}

#[derive(Debug, Default)]
pub struct SpeakerDetector {
    levels: BTreeMap<PeerId, Level>,
    active: Option<PeerId>,
    /// Who is louder than the active speaker, and since when.
    challenger: Option<(PeerId, Instant)>,
    changed_at: Option<Instant>,
}

impl SpeakerDetector {
    pub fn active(&self) -> Option<PeerId> {
        self.active
    }

    /// One packet's audio level from `peer` (`level` in dBov, `-127..=0`; out of range is
    /// clamped). Returns the new active speaker when it changes.
    pub fn level(&mut self, now: Instant, peer: PeerId, level: i8) -> Option<PeerId> {
        let loudness = 127.0 + f32::from(level.clamp(-127, 0));
        let e = self.levels.entry(peer).or_insert(Level {
            smoothed: 0.0,
            at: now,
        });
        let before = e.at(now);
        // The time since the last sample at this sample's loudness (at most GAP; at least
        // 20 ms, so two packets at the same instant still count).
        let dt = now
            .saturating_duration_since(e.at)
            .clamp(Duration::from_millis(20), GAP)
            .as_secs_f32();
        let alpha = 1.0 - (-dt / TAU.as_secs_f32()).exp();
        e.smoothed = before + alpha * (loudness - before);
        e.at = now;
        self.decide(now)
    }

    /// `peer`'s smoothed loudness at `now` (`0` silence .. `127` loudest), if it was heard.
    pub fn loudness(&self, now: Instant, peer: PeerId) -> Option<f32> {
        self.levels.get(&peer).map(|l| l.at(now))
    }

    /// The `n` loudest of `candidates` at `now`, loudest first. Those in `current` (the last
    /// ranking) count [`KEEP_BONUS`] louder; ties go to the lower peer id; one never heard is
    /// silent.
    pub fn loudest(
        &self,
        now: Instant,
        candidates: &[PeerId],
        current: &[PeerId],
        n: usize,
    ) -> Vec<PeerId> {
        let mut scored: Vec<(f32, PeerId)> = candidates
            .iter()
            .map(|&p| {
                let bonus = if current.contains(&p) {
                    KEEP_BONUS
                } else {
                    0.0
                };
                (self.loudness(now, p).unwrap_or(0.0) + bonus, p)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut out: Vec<PeerId> = Vec::with_capacity(n.min(scored.len()));
        for (_, p) in scored {
            if out.len() >= n {
                break;
            }
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// A participant left; if it was the speaker, nobody is until someone speaks.
    pub fn remove(&mut self, peer: PeerId) {
        self.levels.remove(&peer);
        if self.active == Some(peer) {
            self.active = None;
        }
        if self.challenger.is_some_and(|(p, _)| p == peer) {
            self.challenger = None;
        }
    }

    fn decide(&mut self, now: Instant) -> Option<PeerId> {
        let (loudest, level) = self
            .levels
            .iter()
            .map(|(p, l)| (*p, l.at(now)))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        if level < FLOOR || Some(loudest) == self.active {
            self.challenger = None;
            return None;
        }
        if self
            .changed_at
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL)
        {
            return None;
        }
        let current = self
            .active
            .and_then(|p| self.levels.get(&p))
            .map_or(0.0, |l| l.at(now));
        if self.active.is_some() {
            if level < current + MARGIN {
                self.challenger = None;
                return None;
            }
            match self.challenger {
                Some((p, since)) if p == loudest => {
                    if now.saturating_duration_since(since) < HOLD {
                        return None;
                    }
                }
                _ => {
                    self.challenger = Some((loudest, now));
                    return None;
                }
            }
        }
        self.active = Some(loudest);
        self.challenger = None;
        self.changed_at = Some(now);
        Some(loudest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds 20 ms packets from each (peer, level) for `ms`; returns every change.
    fn talk(
        d: &mut SpeakerDetector,
        t: &mut Instant,
        ms: u64,
        who: &[(PeerId, i8)],
    ) -> Vec<PeerId> {
        let mut changes = Vec::new();
        for _ in 0..ms / 20 {
            *t += 20 * MS;
            for &(p, l) in who {
                changes.extend(d.level(*t, p, l));
            }
        }
        changes
    }

    #[test]
    fn the_first_voice_above_the_floor_becomes_the_speaker() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        assert!(talk(&mut d, &mut t, 500, &[(1, -127), (2, -120)]).is_empty());
        assert_eq!(talk(&mut d, &mut t, 500, &[(1, -127), (2, -30)]), vec![2]);
        assert_eq!(d.active(), Some(2));
    }

    #[test]
    fn a_challenger_must_be_louder_for_a_while() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        assert_eq!(talk(&mut d, &mut t, 1000, &[(1, -30), (2, -127)]), vec![1]);
        // A cough (100 ms) does not take over.
        assert!(talk(&mut d, &mut t, 100, &[(1, -30), (2, -10)]).is_empty());
        // About as loud (within the margin): no change either.
        assert!(talk(&mut d, &mut t, 2000, &[(1, -30), (2, -28)]).is_empty());
        // 1 falls silent, 2 keeps talking: 2 takes over, once.
        assert_eq!(talk(&mut d, &mut t, 2000, &[(1, -127), (2, -28)]), vec![2]);
        assert_eq!(d.active(), Some(2));
    }

    #[test]
    fn silence_without_packets_fades() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        assert_eq!(talk(&mut d, &mut t, 1000, &[(1, -20)]), vec![1]);
        // 1 stops sending at all (DTX); 2 speaks quietly, yet above the floor.
        assert_eq!(talk(&mut d, &mut t, 3000, &[(2, -80)]), vec![2]);
    }

    #[test]
    fn a_speaker_who_leaves_is_forgotten() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        talk(&mut d, &mut t, 1000, &[(1, -20)]);
        d.remove(1);
        assert_eq!(d.active(), None);
        assert_eq!(talk(&mut d, &mut t, 600, &[(2, -40)]), vec![2]);
    }

    #[test]
    fn the_loudest_are_ranked_and_keep_their_places_against_equals() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        talk(
            &mut d,
            &mut t,
            1000,
            &[(1, -60), (2, -20), (3, -40), (4, -127)],
        );
        // 5 was never heard: silent, after everyone heard.
        assert_eq!(d.loudest(t, &[1, 2, 3, 4, 5], &[], 3), vec![2, 3, 1]);
        assert_eq!(d.loudest(t, &[1, 2, 3, 4, 5], &[], 10), vec![2, 3, 1, 4, 5]);
        assert_eq!(d.loudest(t, &[5, 4], &[], 1), vec![4]);
        assert_eq!(d.loudest(t, &[], &[], 3), Vec::<PeerId>::new());
        // About as loud: the one ranked before keeps its place.
        let mut d = SpeakerDetector::default();
        talk(&mut d, &mut t, 1000, &[(1, -30), (2, -29)]);
        assert_eq!(d.loudest(t, &[1, 2], &[], 1), vec![2]);
        assert_eq!(d.loudest(t, &[1, 2], &[1], 1), vec![1]);
        // Clearly louder wins anyway.
        talk(&mut d, &mut t, 1000, &[(1, -60), (2, -20)]);
        assert_eq!(d.loudest(t, &[1, 2], &[1], 1), vec![2]);
    }

    proptest! {
        /// The ranking holds `n` of the candidates (fewer if there are fewer), each once, and
        /// nobody left out is louder than anyone in it by more than the bonus.
        #[test]
        fn the_ranking_is_a_top_n(
            steps in prop::collection::vec((1u64..8, -127i8..=0, 0u64..40), 0..200),
            candidates in prop::collection::vec(1u64..10, 0..10),
            current in prop::collection::vec(1u64..10, 0..4),
            n in 0usize..6,
        ) {
            let mut d = SpeakerDetector::default();
            let mut t = Instant::now();
            for (peer, level, gap) in steps {
                t += Duration::from_millis(gap);
                d.level(t, peer, level);
            }
            let ranked = d.loudest(t, &candidates, &current, n);
            let mut distinct = candidates.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(ranked.len(), n.min(distinct.len()));
            for p in &ranked {
                prop_assert!(candidates.contains(p));
                prop_assert_eq!(ranked.iter().filter(|q| *q == p).count(), 1);
            }
            let level = |p: PeerId| d.loudness(t, p).unwrap_or(0.0);
            for out in distinct.iter().filter(|p| !ranked.contains(p)) {
                for r in &ranked {
                    prop_assert!(level(*out) <= level(*r) + KEEP_BONUS + 1e-3);
                }
            }
        }

        /// Changes are at least MIN_INTERVAL apart, and the speaker is always someone heard.
        #[test]
        fn changes_are_spaced_and_name_someone_heard(
            steps in prop::collection::vec((1u64..4, -127i8..=0, 0u64..40), 1..400)
        ) {
            let mut d = SpeakerDetector::default();
            let mut t = Instant::now();
            let mut last: Option<Instant> = None;
            for (peer, level, gap) in steps {
                t += Duration::from_millis(gap);
                if let Some(p) = d.level(t, peer, level) {
                    prop_assert!((1..4).contains(&p));
                    if let Some(l) = last {
                        prop_assert!(t.duration_since(l) >= MIN_INTERVAL);
                    }
                    last = Some(t);
                }
            }
        }
    }
}
