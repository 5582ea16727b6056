//! A video-aware admission and eviction policy for the RAM tier.
//!
//! Belady's optimal policy keeps the objects that will be asked for soonest. Video traffic says
//! a lot about that which recency and frequency alone do not: a segment URL names a stream and
//! an index (`/v/abc/720p/seg_00042.m4s` is index 42 of stream `/v/abc/720p/seg_#.m4s`), and a
//! player reads a stream's segments in order. So the policy estimates, for every resident
//! object, how many requests per unit of time it will draw in the near future:
//!
//! - **Cursors**: each player session (CMCD `sid`, else the client address) has a cursor, the
//!   stream and index it read last, and when. A cursor at index `j` of a stream will ask for
//!   index `k > j` after about `k - j` of its own request intervals, if it keeps watching that
//!   long; the chance that it does is read off a survival curve learned from how cursors
//!   really advanced or stopped. Such an object is worth `p / eta`. Names that carry a time
//!   instead of a number (DASH `$Time$`) step by a segment's duration: each stream learns
//!   that stride from the smallest forward move a session made on it, and distances along
//!   the stream are counted in strides.
//! - **Arrivals**: new sessions keep arriving on a stream at a rate learned from the past
//!   (counts halved every so many arrivals, so the rate follows popularity), most of them at
//!   the stream's first index. Index `k` is worth the arrival rate times the chance of
//!   reading on from the start to `k`; arrivals elsewhere (seeks, rendition switches) spread
//!   over the stream. So the first segments of popular streams are worth the most.
//!
//! Objects whose name has no index are plain objects: their worth is their own request rate.
//!
//! Eviction samples `sample` resident objects (as Redis, LHD and Hyperbolic Caching do), adds
//! the `pool` least worth candidates left from the previous sample (Redis's eviction pool), and
//! takes the ones of least worth until the newcomer fits. Admission follows Belady's bypass: a
//! missed object enters only if its worth times its size is at least the worth times size of
//! what it would displace (byte hit ratio counts bytes, so a byte of a cached object earns its
//! request rate). No constant of any workload is built in: intervals, survival and rates are
//! all learned from the requests, in whatever unit of time the caller uses.
//!
//! The policy is a pure state machine: the caller passes `now`, the seed is injected, and it
//! never does IO. It tracks keys and sizes only; the caller keeps the bytes and carries out the
//! evictions it returns.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

/// A point in time, in any unit the caller likes (milliseconds, or requests in a simulation);
/// only differences matter, and everything time-based is learned in that unit.
pub type Time = u64;

/// Identifies a player session: a hash of the CMCD `sid`, or of the client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// Settings of [`VideoPolicy`].
#[derive(Debug, Clone)]
pub struct VideoPolicyConfig {
    /// Bytes the tier may hold.
    pub capacity: u64,
    /// Resident objects sampled per eviction (more: closer to the exact order, more CPU).
    pub sample: usize,
    /// The least worth objects of each eviction's sample that are kept as candidates for the
    /// next one (Redis's eviction pool): a fresh sample is merged with them, so the order
    /// eviction follows is much closer to the exact one than a sample alone gives.
    pub pool: usize,
    /// Seed of the sampling generator and of the hashes.
    pub seed: u64,
    /// A cursor is forgotten after this many of its request intervals without a request.
    pub cursor_ttl_intervals: f64,
    /// Arrival counts halve after this many arrivals per remembered stream (at least
    /// `window_min`): the memory of the arrival rates, counted in arrivals so that it needs no
    /// unit of time.
    pub window_per_stream: usize,
    pub window_min: usize,
    /// Most streams remembered (their arrival counts); the least popular are forgotten first.
    pub max_streams: usize,
    /// Most sessions tracked at once; the oldest are dropped first when full.
    pub max_sessions: usize,
}

impl VideoPolicyConfig {
    /// Defaults for a tier of `capacity` bytes.
    pub fn new(capacity: u64, seed: u64) -> Self {
        Self {
            capacity,
            sample: 64,
            pool: 16,
            seed,
            cursor_ttl_intervals: 8.0,
            window_per_stream: 8,
            window_min: 4096,
            max_streams: 1 << 20,
            max_sessions: 1 << 20,
        }
    }
}

/// What became of an offered object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admission {
    /// Whether the object is now resident.
    pub admitted: bool,
    /// Keys that left to make room (empty when the object bypassed the tier).
    pub evicted: Vec<Arc<str>>,
}

/// Where an object sits in video terms: its stream and index, if its name has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentName {
    /// Hash of the key with the index taken out (the stream: title, rendition, naming).
    pub stream: u64,
    /// The segment (or slice) index, if the name has one.
    pub index: Option<u64>,
}

/// Splits a cache key into stream and index, generically: the last path component is the
/// file name; the slice keys of large objects (`path\0n`) have their slice index after the
/// NUL; otherwise the last run of digits in the file name without its extension is the index
/// (`seg_00042.m4s`, `chunk-stream0-00042.m4s`, `segment42.ts`, `42.m4s`). The stream is the
/// key with that run replaced by a marker. A name without digits is a plain object (its own
/// stream, no index).
pub fn parse_segment_name(key: &str, hasher: &impl BuildHasher) -> SegmentName {
    let hash_parts = |prefix: &str, suffix: &str| {
        let mut h = hasher.build_hasher();
        prefix.hash(&mut h);
        suffix.hash(&mut h);
        h.finish()
    };
    let plain = || SegmentName {
        stream: hash_parts(key, ""),
        index: None,
    };
    if let Some(nul) = key.rfind('\0') {
        let digits = &key[nul + 1..];
        return match digits.parse::<u64>() {
            Ok(index) if !digits.is_empty() && digits.len() <= 18 => SegmentName {
                stream: hash_parts(&key[..nul], "\0#"),
                index: Some(index),
            },
            _ => plain(),
        };
    }
    let name_start = key.rfind('/').map_or(0, |i| i + 1);
    let name = &key[name_start..];
    let stem_len = match name.rfind('.') {
        Some(dot) if dot > 0 => dot,
        _ => name.len(),
    };
    let stem = &name.as_bytes()[..stem_len];
    let Some(last) = stem.iter().rposition(u8::is_ascii_digit) else {
        return plain();
    };
    let first = stem[..last]
        .iter()
        .rposition(|b| !b.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let digits = &name[first..=last];
    // Only the last 18 digits count, so that the index fits in a u64.
    let tail = &digits[digits.len().saturating_sub(18)..];
    let Ok(index) = tail.parse::<u64>() else {
        return plain();
    };
    SegmentName {
        stream: hash_parts(&key[..name_start + first], &key[name_start + last + 1..]),
        index: Some(index),
    }
}

/// The keyed hasher of the policy's maps (SipHash-1-3 behind a secret prefix from the seed),
/// so that clients cannot aim collisions at them and runs are reproducible.
#[derive(Debug, Clone, Copy)]
pub struct SeededHasher(u64);

impl BuildHasher for SeededHasher {
    type Hasher = std::hash::DefaultHasher;
    fn build_hasher(&self) -> Self::Hasher {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.0);
        h
    }
}

/// xorshift64*: the sampling generator, seeded by the caller.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((u128::from(x) * n as u128) >> 64) as usize
    }
}

/// Ages (segments read in a row on one stream) the survival curve resolves; beyond the last
/// one the hazard of the last is used.
const MAX_AGE: usize = 1024;
/// Request gaps are learned in units of the mean gap, in buckets of this width up to
/// `GAP_BUCKETS * GAP_BUCKET_WIDTH` mean gaps.
const GAP_BUCKET_WIDTH: f64 = 0.125;
const GAP_BUCKETS: usize = 256;

/// Survival-curve buckets: ages 1, 2, 3, 4-7, 8-15, ... (powers of two).
const AGE_BUCKETS: usize = 12;
/// The curve is recomputed after this many continue/stop events.
const SURVIVAL_REFRESH: u32 = 1024;

fn age_bucket(age: u32) -> usize {
    (31 - age.max(1).leading_zeros() as usize).min(AGE_BUCKETS - 1)
}

/// A session's position.
#[derive(Debug, Clone)]
struct Cursor {
    stream: u32,
    index: u64,
    last: Time,
    /// Segments read in a row on this stream, this one included.
    age: u32,
    /// Mean interval between this session's requests (0: not known yet), over its last
    /// `GAP_MEMORY` or so intervals, and how many it has seen (up to `GAP_MEMORY`).
    gap: f64,
    gaps: u32,
}

/// A session's own mean gap follows its last this many intervals.
const GAP_MEMORY: u32 = 8;
/// A session's own gaps are few and noisy (a player's requests are not evenly spaced), so
/// its gap estimate is pooled with the mean over all sessions, which counts as this many of
/// its own intervals.
const GAP_PRIOR: f64 = 4.0;
/// The mean gap over all sessions follows their last this many intervals or so.
const MEAN_GAP_MEMORY: u32 = 1024;

#[derive(Debug, Clone)]
struct Stream {
    hash: u64,
    /// Sessions whose cursor is on this stream.
    cursors: Vec<u64>,
    /// Arrival counts at the first index and elsewhere, as of `epoch`.
    arrivals_base: f64,
    arrivals_mid: f64,
    epoch: u32,
    /// Lowest and highest index seen.
    base: u64,
    top: u64,
    /// The smallest forward move a session made on this stream from one request to the next
    /// (0: none seen yet). Numbered names (`$Number$`, slices) step by 1; names that carry a
    /// time (DASH `$Time$`) step by a segment's duration in the timescale, so distances
    /// along the stream are counted in strides, not in index units.
    stride: u64,
    /// Resident objects of this stream (a stream with some is never forgotten).
    residents: u32,
}

impl Stream {
    /// A stream seen for the first time: no arrivals, no index, no stride yet.
    fn new(hash: u64, epoch: u32) -> Self {
        Self {
            hash,
            cursors: Vec::new(),
            arrivals_base: 0.0,
            arrivals_mid: 0.0,
            epoch,
            base: u64::MAX,
            top: 0,
            stride: 0,
            residents: 0,
        }
    }

    /// Strides from index `from` to index `to` (0 when `to` is not after `from`; rounded to
    /// the nearest stride, at least 1 when `to` is after `from`, since segment durations in
    /// a `$Time$` timeline vary a little).
    fn steps(&self, from: u64, to: u64) -> u64 {
        let diff = to.saturating_sub(from);
        if diff == 0 {
            return 0;
        }
        let stride = self.stride.max(1);
        (diff / stride + u64::from(diff % stride >= stride - stride / 2)).max(1)
    }
}

#[derive(Debug, Clone)]
struct Object {
    key: Arc<str>,
    stream: u32,
    index: Option<u64>,
    size: u64,
}

/// The policy. See the module documentation.
#[derive(Debug, Clone)]
pub struct VideoPolicy {
    config: VideoPolicyConfig,
    hasher: SeededHasher,
    rng: Rng,
    used: u64,
    /// Resident objects, densely, for sampling; `by_key` maps keys to positions.
    objects: Vec<Object>,
    by_key: HashMap<Arc<str>, u32, SeededHasher>,
    /// Eviction candidates carried over from the last sample (keys; some may have left).
    pool: Vec<Arc<str>>,
    streams: Vec<Stream>,
    stream_by_hash: HashMap<u64, u32, SeededHasher>,
    free_streams: Vec<u32>,
    sessions: HashMap<u64, Cursor, SeededHasher>,
    /// Arrival epochs: counts halve at each one.
    epoch: u32,
    arrivals_this_epoch: f64,
    /// Arrivals over all streams, decayed like the streams' counts, and the span of time
    /// those counts cover (decayed alike), so that count / span is a rate.
    total_arrivals: f64,
    span_before: f64,
    epoch_started: Time,
    started: Option<Time>,
    /// Mean interval between a session's consecutive requests: the plain mean of the first
    /// `MEAN_GAP_MEMORY` intervals, exponentially weighted after that (so that a young tier
    /// is not stuck with its very first interval), and how many intervals it has seen (up
    /// to `MEAN_GAP_MEMORY`).
    mean_gap: f64,
    mean_gap_samples: u32,
    /// Continue and stop events per age bucket, and the survival curve made from them:
    /// `log_survival[a]` is the log of the chance of reading from age 1 up to age `a + 1`.
    continued: [f64; AGE_BUCKETS],
    stopped: [f64; AGE_BUCKETS],
    events_since_refresh: u32,
    log_survival: Vec<f64>,
    /// `reach_sum[d]`: expected number of indexes read among the first `d` after an arrival.
    reach_sum: Vec<f64>,
    requests: u64,
    /// Observed gaps between a cursor's steps, in buckets of `GAP_BUCKET_WIDTH` mean gaps,
    /// and from them: the chance that a gap is longer than each bucket's start, and the mean
    /// wait left at each bucket's start (in mean gaps).
    gap_hist: Vec<f64>,
    gap_tail: Vec<f64>,
    gap_residual: Vec<f64>,
    /// The latest `now` seen.
    now: Time,
}

impl VideoPolicy {
    /// An empty tier.
    pub fn new(config: VideoPolicyConfig) -> Self {
        let hasher = SeededHasher(config.seed);
        let mut policy = Self {
            rng: Rng::new(config.seed),
            hasher,
            used: 0,
            objects: Vec::new(),
            by_key: HashMap::with_hasher(hasher),
            pool: Vec::new(),
            streams: Vec::new(),
            stream_by_hash: HashMap::with_hasher(hasher),
            free_streams: Vec::new(),
            sessions: HashMap::with_hasher(hasher),
            epoch: 0,
            arrivals_this_epoch: 0.0,
            total_arrivals: 0.0,
            span_before: 0.0,
            epoch_started: 0,
            started: None,
            mean_gap: 0.0,
            mean_gap_samples: 0,
            continued: [0.0; AGE_BUCKETS],
            stopped: [0.0; AGE_BUCKETS],
            events_since_refresh: 0,
            log_survival: Vec::new(),
            reach_sum: Vec::new(),
            requests: 0,
            gap_hist: vec![0.0; GAP_BUCKETS],
            gap_tail: vec![1.0; GAP_BUCKETS],
            gap_residual: vec![1.0; GAP_BUCKETS],
            now: 0,
            config,
        };
        policy.refresh_survival();
        policy
    }

    /// Bytes resident.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.config.capacity
    }

    /// Objects resident.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether nothing is resident.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Whether `key` is resident.
    pub fn contains(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// A session id from a CMCD `sid` (or any other text), hashed with the policy's key.
    pub fn session_id(&self, text: &str) -> SessionId {
        SessionId(self.hasher.hash_one(text))
    }

    /// A session id from a client address (for players that send no CMCD `sid`), hashed
    /// with the policy's key; no text is built for it.
    pub fn session_id_of_addr(&self, addr: std::net::IpAddr) -> SessionId {
        SessionId(self.hasher.hash_one(addr))
    }

    /// Records a request for `key` by `session` at `now` (hit or miss), and says whether the
    /// object is resident. Call it for every request the tier sees, before [`Self::offer`].
    pub fn on_request(&mut self, now: Time, session: Option<SessionId>, key: &str) -> bool {
        let started = *self.started.get_or_insert(now);
        if self.requests == 0 {
            self.epoch_started = started;
        }
        self.requests += 1;
        self.now = self.now.max(now);
        let name = parse_segment_name(key, &self.hasher);
        let stream = self.stream_for(name.stream);
        match (name.index, session) {
            (Some(index), Some(session)) => self.advance(now, session.0, stream, index),
            (index, _) => self.note_arrival(stream, index),
        }
        if self.requests.is_multiple_of(1024) {
            self.sweep(now);
        }
        self.by_key.contains_key(key)
    }

    /// Offers an object that missed and was filled, of `size` bytes: it enters if it is worth
    /// at least what it would displace (or if it fits). The evicted keys are returned; the
    /// caller drops their bytes. An object already resident only has its size updated.
    pub fn offer(&mut self, now: Time, key: &str, size: u64) -> Admission {
        if let Some(&pos) = self.by_key.get(key) {
            let object = &mut self.objects[pos as usize];
            self.used = self.used - object.size + size;
            object.size = size;
            let mut evicted = Vec::new();
            while self.used > self.config.capacity {
                let victims = self.pick_victims(now, self.used - self.config.capacity, Some(pos));
                if victims.is_empty() {
                    break;
                }
                for v in victims {
                    evicted.push(self.remove_at(v));
                }
            }
            if self.used > self.config.capacity {
                // Nothing else to evict: the object itself does not fit.
                self.remove(key);
                evicted.push(Arc::from(key));
                return Admission {
                    admitted: false,
                    evicted,
                };
            }
            return Admission {
                admitted: true,
                evicted,
            };
        }
        if size > self.config.capacity {
            return Admission::default();
        }
        let name = parse_segment_name(key, &self.hasher);
        let stream = self.stream_for(name.stream);
        let free = self.config.capacity - self.used;
        let mut evicted = Vec::new();
        if size > free {
            let victims = self.pick_victims(now, size - free, None);
            let freed: u64 = victims.iter().map(|&v| self.objects[v as usize].size).sum();
            if freed + free < size {
                return Admission::default();
            }
            let lost: f64 = victims
                .iter()
                .map(|&v| {
                    self.worth(now, &self.objects[v as usize])
                        * self.objects[v as usize].size as f64
                })
                .sum();
            let candidate = Object {
                key: Arc::from(key),
                stream,
                index: name.index,
                size,
            };
            let gained = self.worth(now, &candidate) * size as f64;
            if gained < lost {
                return Admission::default();
            }
            for v in victims {
                evicted.push(self.remove_at(v));
            }
        }
        let key: Arc<str> = Arc::from(key);
        self.by_key
            .insert(Arc::clone(&key), self.objects.len() as u32);
        self.objects.push(Object {
            key,
            stream,
            index: name.index,
            size,
        });
        self.streams[stream as usize].residents += 1;
        self.used += size;
        Admission {
            admitted: true,
            evicted,
        }
    }

    /// Forgets a resident object (a purge, or the caller dropped it); says whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.by_key.get(key) {
            Some(&pos) => {
                self.remove_at(pos);
                true
            }
            None => false,
        }
    }

    /// The estimated request rate of a resident object (requests per unit of time), for
    /// tests and diagnostics.
    pub fn worth_of(&self, now: Time, key: &str) -> Option<f64> {
        let &pos = self.by_key.get(key)?;
        Some(self.worth(now, &self.objects[pos as usize]))
    }

    fn remove_at(&mut self, pos: u32) -> Arc<str> {
        let object = self.objects.swap_remove(pos as usize);
        self.by_key.remove(&object.key);
        if let Some(moved) = self.objects.get(pos as usize) {
            self.by_key.insert(Arc::clone(&moved.key), pos);
        }
        self.used -= object.size;
        let stream = &mut self.streams[object.stream as usize];
        stream.residents = stream.residents.saturating_sub(1);
        object.key
    }

    /// Samples resident objects and returns the least worth ones (positions, in descending
    /// order so that removing them one by one keeps the others valid) until they add up to
    /// `needed` bytes; fewer if the sample does not hold that much.
    fn pick_victims(&mut self, now: Time, needed: u64, keep: Option<u32>) -> Vec<u32> {
        let n = self.objects.len();
        if n == 0 {
            return Vec::new();
        }
        let mut sample: Vec<(f64, u32)> = Vec::with_capacity(self.config.sample.max(1));
        if n <= self.config.sample.max(1) {
            sample.extend((0..n as u32).map(|p| (0.0, p)));
        } else {
            for _ in 0..self.config.sample.max(1) {
                let p = self.rng.below(n) as u32;
                if !sample.iter().any(|&(_, q)| q == p) {
                    sample.push((0.0, p));
                }
            }
        }
        // The pool's objects that are still resident join the sample.
        for key in std::mem::take(&mut self.pool) {
            if let Some(&p) = self.by_key.get(&key) {
                sample.push((0.0, p));
            }
        }
        sample.sort_unstable_by_key(|&(_, p)| p);
        sample.dedup_by_key(|&mut (_, p)| p);
        sample.retain(|&(_, p)| Some(p) != keep);
        for entry in &mut sample {
            entry.0 = self.worth(now, &self.objects[entry.1 as usize]);
        }
        sample.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        self.pool.extend(
            sample
                .iter()
                .take(self.config.pool)
                .map(|&(_, p)| Arc::clone(&self.objects[p as usize].key)),
        );
        let mut freed = 0;
        let mut victims = Vec::new();
        for (_, p) in sample {
            if freed >= needed {
                break;
            }
            freed += self.objects[p as usize].size;
            victims.push(p);
        }
        victims.sort_unstable_by(|a, b| b.cmp(a));
        victims
    }

    /// Estimated requests per unit of time an object will draw soon (see the module docs).
    fn worth(&self, now: Time, object: &Object) -> f64 {
        let stream = &self.streams[object.stream as usize];
        let shift = self.epoch.saturating_sub(stream.epoch).min(1000);
        let decay = 0.5f64.powi(shift as i32);
        let span = self.span(now).max(1.0);
        let base_rate = stream.arrivals_base * decay / span;
        let mid_rate = stream.arrivals_mid * decay / span;
        let Some(k) = object.index else {
            return base_rate + mid_rate;
        };
        let mut rate = 0.0;
        if k >= stream.base {
            let d = stream.steps(stream.base, k) as usize;
            rate += base_rate * self.survival(1, d);
            let len = (stream.steps(stream.base, stream.top) + 1) as f64;
            rate += mid_rate * self.reach(d + 1) / len;
        }
        let ttl = self.cursor_ttl();
        for session in &stream.cursors {
            let Some(cursor) = self.sessions.get(session) else {
                continue;
            };
            if cursor.index >= k || now.saturating_sub(cursor.last) as f64 > ttl {
                continue;
            }
            let steps = stream.steps(cursor.index, k);
            let gap = self.cursor_gap(cursor);
            // The longer a cursor has been quiet, the likelier it has stopped: weigh its next
            // step by the chance it is still reading given the silence (learned gap
            // distribution), and expect that step after the learned residual wait.
            let quiet = now.saturating_sub(cursor.last) as f64 / gap;
            let bucket = ((quiet / GAP_BUCKET_WIDTH) as usize).min(GAP_BUCKETS - 1);
            let next = self.survival(cursor.age as usize, 1);
            let tail = self.gap_tail[bucket];
            let alive = next * tail / (next * tail + 1.0 - next).max(f64::MIN_POSITIVE);
            let p = alive * self.survival(cursor.age as usize + 1, steps as usize - 1);
            let eta = (self.gap_residual[bucket] + (steps - 1) as f64) * gap;
            rate += p / eta.max(1.0);
        }
        rate
    }

    /// A cursor's expected interval between requests: its own mean gap pooled with the mean
    /// over all sessions.
    fn cursor_gap(&self, cursor: &Cursor) -> f64 {
        let mean = self.mean_gap.max(1.0);
        if cursor.gap <= 0.0 || self.mean_gap <= 0.0 {
            return if cursor.gap > 0.0 { cursor.gap } else { mean };
        }
        let own = f64::from(cursor.gaps);
        (own * cursor.gap + GAP_PRIOR * mean) / (own + GAP_PRIOR)
    }

    /// The chance that a cursor of `age` reads `steps` more indexes in a row.
    fn survival(&self, age: usize, steps: usize) -> f64 {
        let last = self.log_survival.len() - 1;
        let at = |a: usize| -> f64 {
            if a <= last {
                self.log_survival[a]
            } else {
                let slope = self.log_survival[last] - self.log_survival[last - 1];
                self.log_survival[last] + slope * (a - last) as f64
            }
        };
        let from = age.saturating_sub(1);
        (at(from + steps) - at(from)).exp()
    }

    /// Expected indexes read among the first `d` after an arrival.
    fn reach(&self, d: usize) -> f64 {
        let last = self.reach_sum.len() - 1;
        self.reach_sum[d.min(last)]
    }

    fn cursor_ttl(&self) -> f64 {
        if self.mean_gap > 0.0 {
            self.config.cursor_ttl_intervals * self.mean_gap
        } else {
            f64::INFINITY
        }
    }

    /// The time the decayed arrival counts cover.
    fn span(&self, now: Time) -> f64 {
        self.span_before + now.saturating_sub(self.epoch_started) as f64
    }

    fn stream_for(&mut self, hash: u64) -> u32 {
        if let Some(&id) = self.stream_by_hash.get(&hash) {
            return id;
        }
        if self.stream_by_hash.len() >= self.config.max_streams {
            self.forget_streams();
        }
        let stream = Stream::new(hash, self.epoch);
        let id = match self.free_streams.pop() {
            Some(id) => {
                self.streams[id as usize] = stream;
                id
            }
            None => {
                self.streams.push(stream);
                (self.streams.len() - 1) as u32
            }
        };
        self.stream_by_hash.insert(hash, id);
        id
    }

    /// Forgets the half of the streams with no resident object and no cursor that drew the
    /// fewest arrivals.
    fn forget_streams(&mut self) {
        let mut idle: Vec<(f64, u32)> = self
            .stream_by_hash
            .values()
            .filter_map(|&id| {
                let s = &self.streams[id as usize];
                let shift = self.epoch.saturating_sub(s.epoch).min(1000);
                (s.residents == 0 && s.cursors.is_empty()).then(|| {
                    (
                        (s.arrivals_base + s.arrivals_mid) * 0.5f64.powi(shift as i32),
                        id,
                    )
                })
            })
            .collect();
        idle.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let n = idle.len().div_ceil(2).max(1).min(idle.len());
        for &(_, id) in &idle[..n] {
            let hash = self.streams[id as usize].hash;
            self.stream_by_hash.remove(&hash);
            self.free_streams.push(id);
        }
    }

    /// Brings a stream's counts to the current epoch.
    fn catch_up(&mut self, stream: u32) {
        let s = &mut self.streams[stream as usize];
        let shift = self.epoch.saturating_sub(s.epoch).min(1000);
        if shift > 0 {
            let decay = 0.5f64.powi(shift as i32);
            s.arrivals_base *= decay;
            s.arrivals_mid *= decay;
            s.epoch = self.epoch;
        }
    }

    /// A session (or a sessionless request) starts reading `stream` at `index`.
    fn note_arrival(&mut self, stream: u32, index: Option<u64>) {
        self.catch_up(stream);
        let s = &mut self.streams[stream as usize];
        match index {
            Some(i) => {
                if i < s.base {
                    // A new first index: what counted as the start so far did not start at
                    // the start.
                    s.arrivals_mid += s.arrivals_base;
                    s.arrivals_base = 0.0;
                    s.base = i;
                }
                s.top = s.top.max(i);
                if i == s.base {
                    s.arrivals_base += 1.0;
                } else {
                    s.arrivals_mid += 1.0;
                }
            }
            None => s.arrivals_base += 1.0,
        }
        self.total_arrivals += 1.0;
        self.arrivals_this_epoch += 1.0;
        let window = (self.config.window_per_stream * self.stream_by_hash.len())
            .max(self.config.window_min) as f64;
        if self.arrivals_this_epoch >= window {
            self.arrivals_this_epoch = 0.0;
            self.epoch += 1;
            self.total_arrivals *= 0.5;
            // The span as of `epoch_started` plus the time since, halved like the counts.
            let now = self.now;
            self.span_before = self.span(now) * 0.5;
            self.epoch_started = now;
        }
    }

    /// Moves `session`'s cursor to `index` of `stream`, learning from the move.
    fn advance(&mut self, now: Time, session: u64, stream: u32, index: u64) {
        let ttl = self.cursor_ttl();
        match self.sessions.get(&session).cloned() {
            Some(old) => {
                let gap = now.saturating_sub(old.last) as f64;
                let expired = gap > ttl;
                let forward = old.stream == stream && index > old.index && !expired;
                if forward {
                    // The smallest forward move is the stream's stride (a seek forward may
                    // set it first; the next ordinary step corrects it).
                    let s = &mut self.streams[stream as usize];
                    let moved = index - old.index;
                    if s.stride == 0 || moved < s.stride {
                        s.stride = moved;
                    }
                }
                let step = forward && self.streams[stream as usize].steps(old.index, index) == 1;
                if !expired {
                    // Every interval of a live session teaches the mean gap.
                    self.mean_gap_samples = (self.mean_gap_samples + 1).min(MEAN_GAP_MEMORY);
                    self.mean_gap += (gap - self.mean_gap) / f64::from(self.mean_gap_samples);
                }
                if old.stream == stream && index == old.index && !expired {
                    // A repeated request (a retry, a range of the same segment).
                    if let Some(c) = self.sessions.get_mut(&session) {
                        c.last = now;
                    }
                    return;
                }
                if step {
                    if self.mean_gap > 0.0 {
                        let x = gap / self.mean_gap / GAP_BUCKET_WIDTH;
                        self.gap_hist[(x as usize).min(GAP_BUCKETS - 1)] += 1.0;
                    }
                    self.learn(old.age, true);
                    let s = &mut self.streams[stream as usize];
                    s.top = s.top.max(index);
                    if let Some(c) = self.sessions.get_mut(&session) {
                        c.index = index;
                        c.last = now;
                        c.age = c.age.saturating_add(1);
                        c.gaps = (c.gaps + 1).min(GAP_MEMORY);
                        c.gap += (gap - c.gap) / f64::from(c.gaps);
                    }
                    return;
                }
                // The session stopped reading where it was (another stream, a seek, or it
                // went quiet): a stop, unless it had reached the stream's end.
                self.leave(session, &old);
                let (gap_estimate, gaps) = if expired {
                    (old.gap, old.gaps)
                } else {
                    let gaps = (old.gaps + 1).min(GAP_MEMORY);
                    (old.gap + (gap - old.gap) / f64::from(gaps), gaps)
                };
                self.start_cursor(now, session, stream, index, gap_estimate, gaps);
            }
            None => {
                if self.sessions.len() >= self.config.max_sessions {
                    self.sweep(now);
                    if self.sessions.len() >= self.config.max_sessions {
                        self.drop_oldest_sessions();
                    }
                }
                self.start_cursor(now, session, stream, index, 0.0, 0);
            }
        }
    }

    /// Counts an arrival at `index` of `stream` and puts `session`'s cursor there, carrying
    /// its request-gap estimate over `gaps` intervals.
    fn start_cursor(
        &mut self,
        now: Time,
        session: u64,
        stream: u32,
        index: u64,
        gap: f64,
        gaps: u32,
    ) {
        self.note_arrival(stream, Some(index));
        self.sessions.insert(
            session,
            Cursor {
                stream,
                index,
                last: now,
                age: 1,
                gap,
                gaps,
            },
        );
        self.streams[stream as usize].cursors.push(session);
    }

    /// Takes `session`'s cursor off its stream, counting a stop.
    fn leave(&mut self, session: u64, cursor: &Cursor) {
        let s = &mut self.streams[cursor.stream as usize];
        if let Some(i) = s.cursors.iter().position(|&c| c == session) {
            s.cursors.swap_remove(i);
        }
        if cursor.index < s.top {
            self.learn(cursor.age, false);
        }
    }

    fn learn(&mut self, age: u32, continued: bool) {
        let b = age_bucket(age);
        if continued {
            self.continued[b] += 1.0;
        } else {
            self.stopped[b] += 1.0;
        }
        self.events_since_refresh += 1;
        if self.events_since_refresh >= SURVIVAL_REFRESH {
            self.refresh_survival();
        }
    }

    /// Rebuilds the survival curve from the continue/stop counts, and ages the counts so that
    /// the curve follows the audience.
    fn refresh_survival(&mut self) {
        self.events_since_refresh = 0;
        // Laplace's rule with one observed continue and one stop per bucket, pooled with the
        // whole population so that sparse buckets lean on the overall rate.
        let all_c: f64 = self.continued.iter().sum();
        let all_s: f64 = self.stopped.iter().sum();
        let overall = (all_c + 1.0) / (all_c + all_s + 2.0);
        let mut log_c = [0.0; AGE_BUCKETS];
        let prior = 8.0;
        for ((log, continued), stopped) in log_c.iter_mut().zip(&self.continued).zip(&self.stopped)
        {
            let p = (continued + prior * overall) / (continued + stopped + prior);
            *log = p.clamp(1e-6, 1.0 - 1e-9).ln();
        }
        self.log_survival.clear();
        self.log_survival.push(0.0);
        self.reach_sum.clear();
        self.reach_sum.push(0.0);
        let mut acc = 0.0;
        for age in 1..=MAX_AGE as u32 {
            acc += log_c[age_bucket(age)];
            self.log_survival.push(acc);
        }
        for d in 0..=MAX_AGE {
            let prev = self.reach_sum[d];
            self.reach_sum.push(prev + self.log_survival[d].exp());
        }
        // Gap tables: a gap in bucket b counts as b + 1/2 bucket widths long.
        let hist_total: f64 = self.gap_hist.iter().sum();
        if hist_total >= 64.0 {
            let mut above = hist_total;
            let mut above_len = self
                .gap_hist
                .iter()
                .enumerate()
                .map(|(b, n)| n * (b as f64 + 0.5) * GAP_BUCKET_WIDTH)
                .sum::<f64>();
            for b in 0..GAP_BUCKETS {
                let start = b as f64 * GAP_BUCKET_WIDTH;
                self.gap_tail[b] = (above / hist_total).max(1e-6);
                self.gap_residual[b] = if above > 0.5 {
                    (above_len / above - start).max(GAP_BUCKET_WIDTH / 2.0)
                } else {
                    GAP_BUCKET_WIDTH / 2.0
                };
                above -= self.gap_hist[b];
                above_len -= self.gap_hist[b] * (b as f64 + 0.5) * GAP_BUCKET_WIDTH;
            }
            if hist_total > 1e6 {
                for n in &mut self.gap_hist {
                    *n *= 0.5;
                }
            }
        }
        let total = all_c + all_s;
        if total > 1e6 {
            for b in 0..AGE_BUCKETS {
                self.continued[b] *= 0.5;
                self.stopped[b] *= 0.5;
            }
        }
    }

    /// Forgets the cursors that have gone quiet, counting their stops.
    fn sweep(&mut self, now: Time) {
        let ttl = self.cursor_ttl();
        if !ttl.is_finite() {
            return;
        }
        let mut quiet: Vec<(u64, Cursor)> = self
            .sessions
            .iter()
            .filter(|(_, c)| now.saturating_sub(c.last) as f64 > ttl)
            .map(|(&id, c)| (id, c.clone()))
            .collect();
        quiet.sort_by_key(|(id, _)| *id);
        for (id, cursor) in quiet {
            self.sessions.remove(&id);
            self.leave(id, &cursor);
        }
    }

    /// Drops the least recently active half of the sessions (when the table is full).
    fn drop_oldest_sessions(&mut self) {
        let mut all: Vec<(Time, u64)> = self.sessions.iter().map(|(&id, c)| (c.last, id)).collect();
        all.sort_unstable();
        for &(_, id) in &all[..all.len() / 2] {
            if let Some(cursor) = self.sessions.remove(&id) {
                let s = &mut self.streams[cursor.stream as usize];
                if let Some(i) = s.cursors.iter().position(|&c| c == id) {
                    s.cursors.swap_remove(i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(key: &str) -> SegmentName {
        parse_segment_name(key, &SeededHasher(7))
    }

    #[test]
    fn segment_names_split_into_stream_and_index() {
        let a = name("/v/abc/720p/seg_00042.m4s");
        let b = name("/v/abc/720p/seg_00043.m4s");
        assert_eq!(a.index, Some(42));
        assert_eq!(b.index, Some(43));
        assert_eq!(a.stream, b.stream);
        assert_ne!(a.stream, name("/v/abc/360p/seg_00042.m4s").stream);
        // The extension's digits are not the index; DASH `$Number$` names work alike.
        assert_eq!(name("/d/chunk-stream0-00017.m4s").index, Some(17));
        assert_eq!(name("/hls/segment7.ts").index, Some(7));
        // Slices of a large object form a stream of their own.
        let s = name("/movie.mp4\u{0}3");
        assert_eq!(s.index, Some(3));
        assert_eq!(s.stream, name("/movie.mp4\u{0}4").stream);
        // No digits: a plain object.
        assert_eq!(name("/v/abc/master.m3u8").index, None);
        assert_eq!(name("/v/abc/720p/init.mp4").index, None);
        assert_ne!(
            name("/v/abc/master.m3u8").stream,
            name("/v/abd/master.m3u8").stream
        );
        // Absurdly long runs keep their last 18 digits.
        assert_eq!(
            name("/x/1234567890123456789012.ts").index,
            Some(567890123456789012)
        );
    }

    fn key(stream: u32, index: u32) -> String {
        format!("/v/t{stream}/r0/seg_{index:05}.m4s")
    }

    /// A DASH `$Time$` name: segment `i` of `stream` starts at the sum of the durations
    /// before it, which alternate as AAC audio's do at 48 kHz (95232 and 96256).
    fn time_key(stream: u32, i: u32) -> String {
        let start: u64 = (0..i)
            .map(|j| if j % 2 == 0 { 95_232 } else { 96_256 })
            .sum();
        format!("/d/t{stream}/audio/{start}.m4s")
    }

    /// The leader reads segments 1..=5 of stream 0 and a lone viewer reads stream 1 alone;
    /// then a follower starts at segment 1 of stream 0, behind the leader. Segment names are
    /// made by `name`. Returns the leader's cursor age, and the worth of the segment two
    /// ahead of the follower, of the lone viewer's segment at the same place, and of the
    /// follower's own segment.
    fn follower_trace(name: fn(u32, u32) -> String) -> (u32, f64, f64, f64) {
        let mut p = VideoPolicy::new(VideoPolicyConfig::new(10_000, 1));
        let (leader, follower, lone) = (SessionId(1), SessionId(2), SessionId(3));
        let mut now = 0;
        for i in 1..=5 {
            for (s, stream) in [(leader, 0), (lone, 1)] {
                now += 10;
                let k = name(stream, i);
                if !p.on_request(now, Some(s), &k) {
                    p.offer(now, &k, 100);
                }
            }
        }
        now += 10;
        p.on_request(now, Some(follower), &name(0, 1));
        let age = p.sessions.get(&leader.0).expect("the leader's cursor").age;
        let ahead = p.worth_of(now, &name(0, 3)).expect("resident");
        let alone = p.worth_of(now, &name(1, 3)).expect("resident");
        // The segment the follower just read, behind everyone.
        let behind = p.worth_of(now, &name(0, 1)).expect("resident");
        (age, ahead, alone, behind)
    }

    #[test]
    fn a_cursor_behind_makes_the_segments_ahead_of_it_worth_keeping() {
        let (_, ahead, alone, behind) = follower_trace(key);
        assert!(ahead > alone, "{ahead} <= {alone}");
        assert!(ahead > 0.0 && behind >= 0.0);
    }

    #[test]
    fn time_named_segments_are_followed_like_numbered_ones() {
        let numbered = follower_trace(key);
        let timed = follower_trace(time_key);
        // The leader's moves by a segment's duration count as steps, not seeks.
        assert_eq!(timed.0, 5, "leader's age with $Time$ names");
        assert_eq!(numbered.0, timed.0);
        // The segment ahead of the follower is worth about what it is with numbered names.
        let (n, t) = (numbered.1, timed.1);
        assert!(
            t > n * 0.5 && t < n * 2.0,
            "$Time$ {t} against $Number$ {n}"
        );
        assert!(timed.1 > timed.2, "{} <= {}", timed.1, timed.2);
    }

    #[test]
    fn strides_round_to_the_nearest_and_never_overflow() {
        let mut s = Stream::new(0, 0);
        assert_eq!(s.steps(5, 5), 0);
        assert_eq!(s.steps(5, 4), 0);
        assert_eq!(s.steps(5, 9), 4);
        s.stride = 95_232;
        assert_eq!(s.steps(0, 96_256), 1);
        assert_eq!(s.steps(0, 95_232 + 96_256), 2);
        assert_eq!(s.steps(0, 10), 1);
        s.stride = u64::MAX;
        assert_eq!(s.steps(0, u64::MAX), 1);
        assert_eq!(s.steps(0, u64::MAX / 2), 1);
        s.stride = 3;
        assert_eq!(s.steps(0, 4), 1);
        assert_eq!(s.steps(0, 5), 2);
    }

    #[test]
    fn a_full_tier_evicts_the_least_worth_and_bypasses_the_worthless() {
        let mut p = VideoPolicy::new(VideoPolicyConfig::new(1_000, 1));
        let mut now = 0;
        // Ten viewers start stream 0 (popular); one reads stream 1.
        for s in 0..10 {
            for i in 1..=5 {
                now += 1;
                let k = key(0, i);
                if !p.on_request(now, Some(SessionId(s)), &k) {
                    p.offer(now, &k, 100);
                }
            }
        }
        for i in 1..=5 {
            now += 1;
            let k = key(1, i);
            if !p.on_request(now, Some(SessionId(99)), &k) {
                p.offer(now, &k, 100);
            }
        }
        assert!(p.used() <= p.capacity());
        // The popular stream's first segments stay.
        for i in 1..=3 {
            assert!(p.contains(&key(0, i)), "segment {i}");
        }
        // An object too large for the tier never enters.
        p.on_request(now, None, "/big.bin");
        assert_eq!(p.offer(now, "/big.bin", 5_000), Admission::default());
        assert!(p.remove(&key(0, 1)));
        assert!(!p.contains(&key(0, 1)));
        assert!(!p.remove(&key(0, 1)));
    }

    #[test]
    fn sessions_by_address_are_told_apart_and_stable() {
        let p = VideoPolicy::new(VideoPolicyConfig::new(1_000, 1));
        let a: std::net::IpAddr = [192, 0, 2, 1].into();
        let b: std::net::IpAddr = [192, 0, 2, 2].into();
        assert_eq!(p.session_id_of_addr(a), p.session_id_of_addr(a));
        assert_ne!(p.session_id_of_addr(a), p.session_id_of_addr(b));
        let v6: std::net::IpAddr = "2001:db8::1".parse().expect("an IPv6 literal");
        assert_ne!(p.session_id_of_addr(v6), p.session_id_of_addr(a));
    }

    #[test]
    fn a_new_sessions_gap_leans_on_the_mean_over_all_sessions() {
        let mut p = VideoPolicy::new(VideoPolicyConfig::new(1_000_000, 1));
        let mut now = 0;
        // Many sessions step every 10 units: the mean gap becomes about 10.
        for i in 1..=200 {
            for s in 0..8 {
                now += 10 / 8 + u64::from(s == 0);
                p.on_request(now, Some(SessionId(s)), &key(s as u32, i));
            }
        }
        let mean = p.mean_gap;
        assert!((5.0..20.0).contains(&mean), "{mean}");
        // A new session takes one step after a long gap: its own estimate alone says 50.
        let late = SessionId(99);
        p.on_request(now, Some(late), &key(50, 1));
        now += 50;
        p.on_request(now, Some(late), &key(50, 2));
        let cursor = p.sessions.get(&late.0).cloned().expect("tracked");
        assert_eq!(cursor.gaps, 1);
        let gap = p.cursor_gap(&cursor);
        assert!(gap > mean && gap < 25.0, "{gap}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request {
            session: u8,
            stream: u8,
            index: u8,
            size: u16,
        },
        Remove {
            stream: u8,
            index: u8,
        },
        Grow {
            stream: u8,
            index: u8,
            size: u16,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..6, 0u8..4, 0u8..12, 1u16..400).prop_map(|(session, stream, index, size)| {
                Op::Request { session, stream, index, size }
            }),
            1 => (0u8..4, 0u8..12).prop_map(|(stream, index)| Op::Remove { stream, index }),
            1 => (0u8..4, 0u8..12, 1u16..1200)
                .prop_map(|(stream, index, size)| Op::Grow { stream, index, size }),
        ]
    }

    /// Runs `ops`, checking the invariants after each, and returns every eviction.
    fn run(ops: &[Op], seed: u64, pool: usize) -> Vec<Vec<Arc<str>>> {
        let mut config = VideoPolicyConfig::new(1_000, seed);
        config.sample = 4;
        config.pool = pool;
        config.max_streams = 3;
        config.max_sessions = 4;
        let mut p = VideoPolicy::new(config);
        let mut log = Vec::new();
        for (t, op) in ops.iter().enumerate() {
            let now = t as u64 * 3;
            match *op {
                Op::Request {
                    session,
                    stream,
                    index,
                    size,
                } => {
                    let k = key(u32::from(stream), u32::from(index));
                    if !p.on_request(now, Some(SessionId(u64::from(session))), &k) {
                        let a = p.offer(now, &k, u64::from(size));
                        assert_eq!(a.admitted, p.contains(&k));
                        log.push(a.evicted);
                    }
                }
                Op::Remove { stream, index } => {
                    p.remove(&key(u32::from(stream), u32::from(index)));
                }
                Op::Grow {
                    stream,
                    index,
                    size,
                } => {
                    let k = key(u32::from(stream), u32::from(index));
                    if p.contains(&k) {
                        log.push(p.offer(now, &k, u64::from(size)).evicted);
                    }
                }
            }
            assert!(p.used() <= p.capacity(), "over capacity");
            assert_eq!(p.used(), p.objects.iter().map(|o| o.size).sum::<u64>());
            assert_eq!(p.by_key.len(), p.objects.len());
            assert!(p.pool.len() <= pool, "the eviction pool outgrew its size");
            for (i, o) in p.objects.iter().enumerate() {
                assert_eq!(p.by_key.get(&o.key).copied(), Some(i as u32));
                assert!(p.worth(now, o).is_finite());
            }
        }
        log
    }

    proptest! {
        #[test]
        fn never_over_capacity_and_the_same_inputs_give_the_same_evictions(
            ops in proptest::collection::vec(op(), 1..300),
            seed in any::<u64>(),
            pool in 0usize..6,
        ) {
            prop_assert_eq!(run(&ops, seed, pool), run(&ops, seed, pool));
        }

        #[test]
        fn any_key_parses(key in "[a-z0-9/._\u{0}-]{0,40}") {
            let _ = name(&key);
        }
    }
}
