//! One outgoing RTP stream's munger: which incoming packets it forwards, and the sequence
//! number, timestamp and VP8 picture ids they leave with.
//!
//! A subscriber's outgoing stream is fed by one source at a time (a publisher's track, later
//! one simulcast layer of it). Switching source (another layer, another publisher in the same
//! slot) starts a new *segment*, only on a keyframe of the new source. Within a segment the
//! outgoing numbers are the incoming ones plus fixed offsets, so a loss upstream is a gap
//! downstream that the receiver NACKs, and a late retransmission lands in its own place. At a
//! switch the offsets are chosen so the new segment continues right after the highest number
//! sent so far. Pure: no socket, no clock (receive times come with the packets), no str0m.
//!
//! Invariants (checked by the proptest below):
//! - no outgoing sequence number is used twice;
//! - within a segment, outgoing minus incoming sequence number is constant;
//! - a segment's first sequence number is one more than the highest sent before it;
//! - a packet older than its segment's first packet is dropped (it would reuse a number);
//! - timestamps: constant offset within a segment; a new segment starts after the last
//!   timestamp sent, by at least 1 and by about the receive time between them;
//! - a segment starts only on a keyframe (video) of the selected source;
//! - VP8 picture ids and TL0PICIDX continue by one across a switch.
//!
//! A pause ([`Forwarder::interrupt`]: the room drops the source's packets for a while, as
//! for a muted track or audio that is not among the loudest) ends the segment: the packets
//! dropped meanwhile leave no gap, and sending resumes with a new segment (for video, at a
//! keyframe) right after the highest number sent.

use std::time::Instant;

/// Which source a packet comes from: opaque to the forwarder (the room packs a track and a
/// layer into it).
pub type SourceKey = u128;

/// The VP8 ids of a packet, when its payload descriptor has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Ids {
    /// The picture id (7 or 15 bits, as `pid_15_bit` says).
    pub pid: u16,
    pub pid_15_bit: bool,
    pub tl0: Option<u8>,
}

/// What the forwarder needs of one incoming packet (no payload, no source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPacket {
    /// The extended (64-bit, unwrapped) sequence number.
    pub seq: u64,
    pub ts: u32,
    /// The first packet of a keyframe (always true for audio, which needs none).
    pub keyframe_start: bool,
    pub vp8: Option<Vp8Ids>,
    /// When the packet left the socket.
    pub recv_at: Instant,
    /// RTP clock rate of the codec (90 000 for video, 48 000 for Opus).
    pub clock_rate: u32,
}

/// The numbers one forwarded packet leaves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutPacket {
    /// Extended sequence number, starting below 65 536 (str0m derives the ROC from it).
    pub seq: u64,
    pub ts: u32,
    pub vp8: Option<Vp8Ids>,
}

/// What became of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward(OutPacket),
    /// Not from the source being sent (another layer, another track) and not the start of a
    /// switch to the selected one.
    NotSelected,
    /// The selected source's packet, but the switch waits for its keyframe.
    WaitingForKeyframe,
    /// From before the current segment's first packet: its number is taken.
    TooOld,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    source: SourceKey,
    /// The incoming sequence number of the segment's first packet.
    first_in_seq: u64,
    /// Its outgoing number.
    first_out_seq: u64,
    ts_offset: u32,
    pid_offset: u16,
    tl0_offset: u8,
}

/// One outgoing stream's state.
#[derive(Debug, Clone)]
pub struct Forwarder {
    segment: Option<Segment>,
    /// The source to send; a switch to it happens on its next keyframe.
    selected: Option<SourceKey>,
    /// Whether the current segment's source goes on being sent until the selected one's
    /// keyframe (a simulcast layer switch), rather than stopping at once.
    seamless: bool,
    /// The outgoing number of the first segment's first packet.
    first_seq: u64,
    /// Highest outgoing sequence number so far.
    max_out_seq: Option<u64>,
    /// The last outgoing timestamp of the highest sequence number, and when that packet
    /// was received.
    last_ts: u32,
    last_recv_at: Option<Instant>,
    /// The last outgoing VP8 ids (of the highest sequence number sent).
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
    #[cfg(test)]
    broken: bool,
}

impl Forwarder {
    /// A stream whose first packet will leave with sequence number `first_seq` (below 65 536;
    /// the shell picks it at random).
    pub fn new(first_seq: u16) -> Self {
        Self {
            segment: None,
            selected: None,
            seamless: false,
            first_seq: u64::from(first_seq),
            max_out_seq: None,
            last_ts: 0,
            last_recv_at: None,
            last_pid: None,
            last_tl0: None,
            #[cfg(test)]
            broken: false,
        }
    }

    /// Chooses the source to send; `None` stops sending. The switch happens on the source's
    /// next keyframe.
    pub fn select(&mut self, source: Option<SourceKey>) {
        self.selected = source;
        self.seamless = false;
        if source.is_none() {
            self.segment = None;
        }
    }

    /// Chooses another source of the same picture (another simulcast layer): the current
    /// one goes on being sent until the new one's keyframe starts a segment.
    pub fn switch(&mut self, source: SourceKey) {
        self.selected = Some(source);
        self.seamless = true;
    }

    /// The source being sent now, if any.
    pub fn sending(&self) -> Option<SourceKey> {
        self.segment.map(|s| s.source)
    }

    /// Ends the current segment without changing the source: the packets the caller drops
    /// from now on leave no gap in the outgoing numbers, and the next packet forwarded (for
    /// video, the next keyframe) starts a new segment after the highest number sent.
    pub fn interrupt(&mut self) {
        self.segment = None;
    }

    /// Whether a segment is running (something was forwarded since the last switch or
    /// interruption).
    pub fn in_segment(&self) -> bool {
        self.segment.is_some()
    }

    /// The source selected (sent now, or waiting for its keyframe).
    pub fn selected(&self) -> Option<SourceKey> {
        self.selected
    }

    /// Whether the selected source is waiting for a keyframe before anything is sent.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.selected.is_some() && self.segment.map(|s| s.source) != self.selected
    }

    /// Decides the fate of a packet from `source`, and its outgoing numbers if it is
    /// forwarded.
    pub fn handle(&mut self, source: SourceKey, p: &InPacket) -> Verdict {
        if self.selected != Some(source) {
            // During a seamless switch the old source continues its segment.
            if self.seamless
                && let Some(seg) = self.segment
                && seg.source == source
            {
                if p.seq < seg.first_in_seq {
                    return Verdict::TooOld;
                }
                return Verdict::Forward(self.emit(&seg, p));
            }
            return Verdict::NotSelected;
        }
        match self.segment {
            Some(seg) if seg.source == source => {
                if p.seq < seg.first_in_seq {
                    return Verdict::TooOld;
                }
                Verdict::Forward(self.emit(&seg, p))
            }
            _ if !p.keyframe_start => Verdict::WaitingForKeyframe,
            _ => {
                let seg = self.start_segment(source, p);
                self.segment = Some(seg);
                Verdict::Forward(self.emit(&seg, p))
            }
        }
    }

    fn start_segment(&self, source: SourceKey, p: &InPacket) -> Segment {
        let Some(max) = self.max_out_seq else {
            // The stream's very first packet: timestamps and picture ids go through as
            // they are.
            return Segment {
                source,
                first_in_seq: p.seq,
                first_out_seq: self.first_seq,
                ts_offset: 0,
                pid_offset: 0,
                tl0_offset: 0,
            };
        };
        #[cfg(test)]
        let max = if self.broken { max } else { max + 1 };
        #[cfg(not(test))]
        let max = max + 1;
        // The new segment's first timestamp: after the last one, by the receive time between
        // the two packets (at least one tick, so a receiver never sees time stand still).
        let elapsed = self
            .last_recv_at
            .map_or(0, |t| p.recv_at.saturating_duration_since(t).as_micros());
        let ticks = (elapsed * u128::from(p.clock_rate) / 1_000_000).clamp(1, 1 << 30);
        let out_ts = self.last_ts.wrapping_add(ticks as u32);
        let (pid_offset, tl0_offset) = match p.vp8 {
            Some(ids) => (
                self.last_pid
                    .map_or(0, |last| last.wrapping_add(1).wrapping_sub(ids.pid)),
                match (self.last_tl0, ids.tl0) {
                    (Some(last), Some(tl0)) => last.wrapping_add(1).wrapping_sub(tl0),
                    _ => 0,
                },
            ),
            None => (0, 0),
        };
        Segment {
            source,
            first_in_seq: p.seq,
            first_out_seq: max,
            ts_offset: out_ts.wrapping_sub(p.ts),
            pid_offset,
            tl0_offset,
        }
    }

    fn emit(&mut self, seg: &Segment, p: &InPacket) -> OutPacket {
        let seq = seg.first_out_seq + (p.seq - seg.first_in_seq);
        let ts = p.ts.wrapping_add(seg.ts_offset);
        let vp8 = p.vp8.map(|ids| {
            let mask = if ids.pid_15_bit { 0x7fff } else { 0x7f };
            Vp8Ids {
                pid: ids.pid.wrapping_add(seg.pid_offset) & mask,
                pid_15_bit: ids.pid_15_bit,
                tl0: ids.tl0.map(|t| t.wrapping_add(seg.tl0_offset)),
            }
        });
        if self.max_out_seq.is_none_or(|m| seq > m) {
            self.max_out_seq = Some(seq);
            self.last_ts = ts;
            self.last_recv_at = Some(p.recv_at);
            if let Some(v) = vp8 {
                self.last_pid = Some(v.pid);
                self.last_tl0 = v.tl0.or(self.last_tl0);
            }
        }
        OutPacket { seq, ts, vp8 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use std::collections::{HashMap, HashSet};
    use std::time::Duration;

    /// One packet as a source sends it, before loss and reordering.
    #[derive(Debug, Clone)]
    struct Sent {
        source: SourceKey,
        seq: u64,
        ts: u32,
        keyframe_start: bool,
        pid: u16,
        tl0: u8,
        at_ms: u64,
    }

    #[derive(Debug, Clone)]
    enum Step {
        Packet(usize),
        Select(SourceKey),
        /// A seamless switch (simulcast): the old source goes on until the new keyframe.
        Switch(SourceKey),
        /// The caller drops the selected source's packets for a while (mute, not loudest).
        Interrupt,
    }

    /// Two sources sending interleaved, each with its own numbering; keyframes now and then;
    /// losses; reordering; late retransmissions; switches between the sources.
    fn scenario() -> impl Strategy<Value = (Vec<Sent>, Vec<Step>, u16)> {
        (
            prop::collection::vec((0u128..2, any::<bool>(), 0u8..10, 0u8..8), 1..300),
            any::<[u64; 2]>(),
            any::<[u32; 2]>(),
            any::<u16>(),
        )
            .prop_map(|(events, seq0, ts0, first)| {
                let mut next_seq = [seq0[0] % 60_000 + 1_000, seq0[1] % 60_000 + 1_000];
                let mut next_ts = ts0;
                let mut pid = [7u16, 30_000];
                let mut sent = Vec::new();
                let mut steps = Vec::new();
                let mut late: Vec<usize> = Vec::new();
                for (i, (src, key, fate, other)) in events.into_iter().enumerate() {
                    let s = src as usize;
                    let idx = sent.len();
                    sent.push(Sent {
                        source: src,
                        seq: next_seq[s],
                        ts: next_ts[s],
                        keyframe_start: key && fate < 4,
                        pid: pid[s] & 0x7fff,
                        tl0: (pid[s] % 256) as u8,
                        at_ms: i as u64 * 5,
                    });
                    next_seq[s] += 1;
                    if other % 3 == 0 {
                        next_ts[s] = next_ts[s].wrapping_add(3000);
                        pid[s] = pid[s].wrapping_add(1);
                    }
                    match fate {
                        // Lost, then perhaps retransmitted later.
                        0 => late.push(idx),
                        // Delivered after the next one.
                        1 if !steps.is_empty() => {
                            let last = steps.len() - 1;
                            steps.insert(last, Step::Packet(idx));
                        }
                        _ => steps.push(Step::Packet(idx)),
                    }
                    if other == 7 {
                        steps.push(Step::Select(src ^ 1));
                    }
                    if other == 5 {
                        steps.push(Step::Switch(src ^ 1));
                    }
                    if other == 5 && fate == 9 {
                        steps.push(Step::Interrupt);
                    }
                    if other == 6
                        && let Some(l) = late.pop()
                    {
                        steps.push(Step::Packet(l));
                    }
                }
                steps.insert(0, Step::Select(0));
                (sent, steps, first)
            })
    }

    #[derive(Debug, Clone, Copy)]
    struct Out {
        in_idx: usize,
        out: OutPacket,
        /// The first packet forwarded after an interruption.
        after_interrupt: bool,
    }

    fn run(sent: &[Sent], steps: &[Step], first: u16, broken: bool) -> (Vec<Out>, Vec<Verdict>) {
        let base = Instant::now();
        let mut f = Forwarder::new(first);
        f.broken = broken;
        let mut outs = Vec::new();
        let mut verdicts = Vec::new();
        let mut interrupted = false;
        for step in steps {
            match step {
                Step::Select(s) => f.select(Some(*s)),
                Step::Switch(s) => f.switch(*s),
                Step::Interrupt => {
                    f.interrupt();
                    interrupted = true;
                }
                Step::Packet(i) => {
                    let s = &sent[*i];
                    let v = f.handle(
                        s.source,
                        &InPacket {
                            seq: s.seq,
                            ts: s.ts,
                            keyframe_start: s.keyframe_start,
                            vp8: Some(Vp8Ids {
                                pid: s.pid,
                                pid_15_bit: true,
                                tl0: Some(s.tl0),
                            }),
                            recv_at: base + Duration::from_millis(s.at_ms),
                            clock_rate: 90_000,
                        },
                    );
                    if let Verdict::Forward(out) = v {
                        outs.push(Out {
                            in_idx: *i,
                            out,
                            after_interrupt: interrupted,
                        });
                        interrupted = false;
                    }
                    verdicts.push(v);
                }
            }
        }
        (outs, verdicts)
    }

    /// The invariants of the module comment, over what one run forwarded.
    fn check(sent: &[Sent], outs: &[Out], first: u16) -> Result<(), String> {
        let mut used = HashSet::new();
        let mut max_out: Option<u64> = None;
        let mut max_ts: Option<u32> = None;
        let mut last_pid: Option<u16> = None;
        let mut seg_source: Option<SourceKey> = None;
        let mut seg_offset = 0i128;
        let mut ts_offsets: HashMap<u64, u32> = HashMap::new();
        for (n, o) in outs.iter().enumerate() {
            let s = &sent[o.in_idx];
            if !used.insert(o.out.seq) {
                return Err(format!("out seq {} used twice", o.out.seq));
            }
            if n == 0 && o.out.seq != u64::from(first) {
                return Err("the first packet does not leave with the first seq".into());
            }
            let offset = i128::from(o.out.seq) - i128::from(s.seq);
            let new_segment = seg_source != Some(s.source) || o.after_interrupt;
            if new_segment {
                if !s.keyframe_start {
                    return Err(format!("a segment starts without a keyframe at {n}"));
                }
                if let Some(m) = max_out
                    && o.out.seq != m + 1
                {
                    return Err(format!("segment starts at {} after max {m}", o.out.seq));
                }
                if let Some(t) = max_ts
                    && (o.out.ts.wrapping_sub(t) as i32) <= 0
                {
                    return Err(format!("ts goes back at a switch: {} after {t}", o.out.ts));
                }
                if let (Some(p), Some(v)) = (last_pid, o.out.vp8)
                    && v.pid != (p + 1) & 0x7fff
                {
                    return Err(format!("picture id jumps at a switch: {} after {p}", v.pid));
                }
                seg_source = Some(s.source);
                seg_offset = offset;
                ts_offsets.clear();
            } else if offset != seg_offset {
                return Err(format!("seq offset changes inside a segment at {n}"));
            }
            let ts_off = o.out.ts.wrapping_sub(s.ts);
            if *ts_offsets.entry(0).or_insert(ts_off) != ts_off {
                return Err(format!("ts offset changes inside a segment at {n}"));
            }
            if max_out.is_none_or(|m| o.out.seq > m) {
                max_out = Some(o.out.seq);
                max_ts = Some(o.out.ts);
                last_pid = o.out.vp8.map(|v| v.pid);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn outgoing_numbers_keep_their_invariants((sent, steps, first) in scenario()) {
            let (outs, verdicts) = run(&sent, &steps, first, false);
            prop_assert!(check(&sent, &outs, first).is_ok(), "{:?}", check(&sent, &outs, first));
            // Every packet of the selected source after the first keyframe of a segment is
            // forwarded unless older than the segment: nothing else is lost.
            for v in &verdicts {
                prop_assert!(matches!(v, Verdict::Forward(_) | Verdict::NotSelected
                    | Verdict::WaitingForKeyframe | Verdict::TooOld));
            }
        }

        #[test]
        fn in_order_lossless_input_leaves_contiguous(n in 1usize..500, first in any::<u16>(), seq0 in 0u64..100_000) {
            let base = Instant::now();
            let mut f = Forwarder::new(first);
            f.select(Some(1));
            let mut last: Option<OutPacket> = None;
            for i in 0..n as u64 {
                let v = f.handle(1, &InPacket { seq: seq0 + i, ts: (i * 960) as u32,
                    keyframe_start: true, vp8: None, recv_at: base + Duration::from_millis(i * 20),
                    clock_rate: 48_000 });
                let Verdict::Forward(out) = v else { return Err(TestCaseError::fail("dropped")) };
                if let Some(l) = last {
                    prop_assert_eq!(out.seq, l.seq + 1);
                    prop_assert!((out.ts.wrapping_sub(l.ts) as i32) > 0);
                }
                last = Some(out);
            }
        }
    }

    /// The checker must tell a munger that reuses a number at a switch from the right one;
    /// otherwise the proptest above proves nothing.
    #[test]
    fn the_check_catches_a_broken_munger() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let mut caught = 0;
        for _ in 0..200 {
            let (sent, steps, first) = scenario()
                .new_tree(&mut runner)
                .expect("a scenario")
                .current();
            let (good, _) = run(&sent, &steps, first, false);
            assert!(check(&sent, &good, first).is_ok());
            let (bad, _) = run(&sent, &steps, first, true);
            if check(&sent, &bad, first).is_err() {
                caught += 1;
            }
        }
        assert!(
            caught > 20,
            "the check caught the broken munger only {caught} times"
        );
    }

    /// Audio dropped for a while (not among the loudest, or muted) leaves no gap: the next
    /// packet sent follows the last one sent, and its timestamp moves by the time between.
    #[test]
    fn an_interruption_leaves_no_gap() {
        let base = Instant::now();
        let p = |seq: u64, key| InPacket {
            seq,
            ts: seq as u32 * 960,
            keyframe_start: key,
            vp8: None,
            recv_at: base + Duration::from_millis(seq * 20),
            clock_rate: 48_000,
        };
        let mut f = Forwarder::new(1000);
        f.select(Some(1));
        let mut last = None;
        for seq in 0..10 {
            let Verdict::Forward(o) = f.handle(1, &p(seq, true)) else {
                panic!("forwarded")
            };
            last = Some(o);
        }
        let last = last.expect("sent");
        assert_eq!(last.seq, 1009);
        f.interrupt();
        assert!(!f.in_segment());
        // Packets 10..50 are dropped by the caller; 50 is the next one sent.
        let Verdict::Forward(next) = f.handle(1, &p(50, true)) else {
            panic!("resumed")
        };
        assert_eq!(next.seq, 1010);
        assert_eq!(next.ts.wrapping_sub(last.ts), 41 * 960);
        // Video waits for a keyframe after an interruption.
        let mut v = Forwarder::new(0);
        v.select(Some(2));
        assert!(matches!(v.handle(2, &p(1, true)), Verdict::Forward(_)));
        v.interrupt();
        assert_eq!(v.handle(2, &p(5, false)), Verdict::WaitingForKeyframe);
        assert!(v.waiting_for_keyframe());
        let Verdict::Forward(k) = v.handle(2, &p(6, true)) else {
            panic!("keyframe")
        };
        assert_eq!(k.seq, 1);
    }

    #[test]
    fn a_switch_waits_for_a_keyframe_and_old_packets_are_dropped() {
        let base = Instant::now();
        let p = |seq, key| InPacket {
            seq,
            ts: seq as u32 * 3000,
            keyframe_start: key,
            vp8: None,
            recv_at: base + Duration::from_millis(seq),
            clock_rate: 90_000,
        };
        let mut f = Forwarder::new(100);
        assert_eq!(f.handle(1, &p(10, true)), Verdict::NotSelected);
        f.select(Some(1));
        assert!(f.waiting_for_keyframe());
        assert_eq!(f.handle(1, &p(10, false)), Verdict::WaitingForKeyframe);
        let Verdict::Forward(a) = f.handle(1, &p(11, true)) else {
            panic!("keyframe forwarded")
        };
        assert_eq!(a.seq, 100);
        assert!(!f.waiting_for_keyframe());
        assert_eq!(f.handle(1, &p(10, false)), Verdict::TooOld);
        f.select(Some(2));
        assert_eq!(f.handle(1, &p(12, false)), Verdict::NotSelected);
        assert_eq!(f.handle(2, &p(500, false)), Verdict::WaitingForKeyframe);
        let Verdict::Forward(b) = f.handle(2, &p(501, true)) else {
            panic!("switch")
        };
        assert_eq!(b.seq, 101);
        assert!(b.ts > a.ts);
    }

    #[test]
    fn a_seamless_switch_keeps_sending_the_old_source_until_the_keyframe() {
        let base = Instant::now();
        let p = |seq, key| InPacket {
            seq,
            ts: seq as u32 * 3000,
            keyframe_start: key,
            vp8: None,
            recv_at: base + Duration::from_millis(seq),
            clock_rate: 90_000,
        };
        let mut f = Forwarder::new(100);
        f.select(Some(1));
        assert!(matches!(f.handle(1, &p(10, true)), Verdict::Forward(_)));
        f.switch(2);
        assert_eq!(f.sending(), Some(1));
        assert!(matches!(f.handle(1, &p(11, false)), Verdict::Forward(_)));
        assert_eq!(f.handle(2, &p(500, false)), Verdict::WaitingForKeyframe);
        let Verdict::Forward(b) = f.handle(2, &p(501, true)) else {
            panic!("switch")
        };
        assert_eq!(b.seq, 102);
        assert_eq!(f.sending(), Some(2));
        assert_eq!(f.handle(1, &p(12, false)), Verdict::NotSelected);
    }
}
