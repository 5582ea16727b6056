//! Diagnostics (`--diagnose`), not the edge's policy: ablations that tell which knowledge the
//! gap between the edge's online policy and the offline Belady reference is made of.
//!
//! The edge's policy is re-run with more sampled objects per eviction (closer to exact
//! eviction) and with a longer memory of arrival rates. Beside it runs a *model* policy, a
//! compact re-statement of the edge's scoring (an object is worth its expected request rate:
//! cursors behind it on its stream, plus new sessions arriving on the stream and reading on)
//! whose knowledge can be swapped for oracles read off the whole trace:
//!
//! - **learned**: arrival rates counted since the start (infinite memory, the best estimate
//!   of a stationary rate), a geometric survival with the learned stop rate, the learned mean
//!   request gap: everything from the past, as an online policy must;
//! - **oracle rates**: each stream's true arrival rates (arrivals over the whole trace);
//! - **oracle remaining**: each session's true number of further consecutive segments on its
//!   stream, so a cursor's contribution is certain (but not its timing);
//! - **oracle timing**: on top of that, the exact time of each in-progress session's future
//!   requests (Belady's knowledge for sessions already started; new sessions stay unknown).
//!
//! None of this code is used by the edge; it exists to measure, and it reads the trace's
//! future where an oracle says so.

use super::Counts;

/// Which knowledge the model policy has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Knowledge {
    pub oracle_rates: bool,
    pub oracle_remaining: bool,
    pub oracle_timing: bool,
    /// Resident objects sampled per eviction (`usize::MAX`: every resident object).
    pub sample: usize,
}

/// The trace, in the dense ids the generator uses.
pub(crate) struct ModelInputs<'a> {
    pub requests: &'a [u32],
    pub session_ids: &'a [u32],
    pub sizes: &'a [u32],
    /// Stream (title and rendition) and segment index of every object.
    pub object_stream: &'a [u32],
    pub object_index: &'a [u32],
    /// Segments of every stream.
    pub stream_len: &'a [u32],
    pub capacity: u64,
    pub warmup: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    stream: u32,
    index: u32,
    last: u64,
    /// Index in the trace of the session's latest request.
    at: u32,
    active: bool,
    /// Oracle: further consecutive segments this session will read on this stream.
    run_left: u32,
}

/// For each request, how many further consecutive segments its session reads on the same
/// stream, and the index of the session's next request (`u32::MAX`: none).
fn oracle_runs(inputs: &ModelInputs<'_>) -> (Vec<u32>, Vec<u32>) {
    let n = inputs.requests.len();
    let mut run_left = vec![0u32; n];
    let mut next_by_session = vec![u32::MAX; n];
    let n_sessions = inputs
        .session_ids
        .iter()
        .max()
        .map_or(0, |&m| m as usize + 1);
    let mut later = vec![u32::MAX; n_sessions];
    for i in (0..n).rev() {
        let s = inputs.session_ids[i] as usize;
        let o = inputs.requests[i] as usize;
        let j = later[s];
        if j != u32::MAX {
            next_by_session[i] = j;
            let p = inputs.requests[j as usize] as usize;
            if inputs.object_stream[p] == inputs.object_stream[o]
                && inputs.object_index[p] == inputs.object_index[o] + 1
            {
                run_left[i] = run_left[j as usize] + 1;
            }
        }
        later[s] = i as u32;
    }
    (run_left, next_by_session)
}

struct Model<'a> {
    inputs: &'a ModelInputs<'a>,
    knowledge: Knowledge,
    run_left: Vec<u32>,
    next_by_session: Vec<u32>,
    oracle_base: Vec<f64>,
    oracle_mid: Vec<f64>,
    base: Vec<f64>,
    mid: Vec<f64>,
    cursors: Vec<Vec<u32>>,
    sessions: Vec<Option<Cursor>>,
    continued: f64,
    stopped: f64,
    gap_sum: f64,
    gap_n: f64,
    resident: Vec<u32>,
    position: Vec<u32>,
    used: u64,
    rng: u64,
}

const ABSENT: u32 = u32::MAX;

impl<'a> Model<'a> {
    fn new(inputs: &'a ModelInputs<'a>, knowledge: Knowledge) -> Self {
        let n_streams = inputs.stream_len.len();
        let (run_left, next_by_session) = oracle_runs(inputs);
        // True arrival rates: requests that are not the next segment of the same session.
        let mut oracle_base = vec![0.0; n_streams];
        let mut oracle_mid = vec![0.0; n_streams];
        let n = inputs.requests.len();
        let n_sessions = inputs
            .session_ids
            .iter()
            .max()
            .map_or(0, |&m| m as usize + 1);
        let mut last_of_session = vec![ABSENT; n_sessions];
        for i in 0..n {
            let s = inputs.session_ids[i] as usize;
            let o = inputs.requests[i] as usize;
            let step = last_of_session[s] != ABSENT && {
                let p = last_of_session[s] as usize;
                inputs.object_stream[p] == inputs.object_stream[o]
                    && inputs.object_index[p] + 1 == inputs.object_index[o]
            };
            if !step {
                let st = inputs.object_stream[o] as usize;
                if inputs.object_index[o] == 0 {
                    oracle_base[st] += 1.0 / n as f64;
                } else {
                    oracle_mid[st] += 1.0 / n as f64;
                }
            }
            last_of_session[s] = o as u32;
        }
        Self {
            inputs,
            knowledge,
            run_left,
            next_by_session,
            oracle_base,
            oracle_mid,
            base: vec![0.0; n_streams],
            mid: vec![0.0; n_streams],
            cursors: vec![Vec::new(); n_streams],
            sessions: vec![None; n_sessions],
            continued: 0.0,
            stopped: 0.0,
            gap_sum: 0.0,
            gap_n: 0.0,
            resident: Vec::new(),
            position: vec![ABSENT; inputs.sizes.len()],
            used: 0,
            rng: inputs.seed ^ 0x9E37_79B9_7F4A_7C15 | 1,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((u128::from(x) * n as u128) >> 64) as usize
    }

    fn gap(&self) -> f64 {
        if self.gap_n > 0.0 {
            self.gap_sum / self.gap_n
        } else {
            1.0
        }
    }

    fn hazard(&self) -> f64 {
        (self.stopped + 1.0) / (self.stopped + self.continued + 2.0)
    }

    fn leave(&mut self, session: u32, cursor: Cursor) {
        let list = &mut self.cursors[cursor.stream as usize];
        if let Some(i) = list.iter().position(|&c| c == session) {
            list.swap_remove(i);
        }
        if cursor.index + 1 < self.inputs.stream_len[cursor.stream as usize] {
            self.stopped += 1.0;
        }
    }

    fn observe(&mut self, t: usize) {
        let now = t as u64;
        let o = self.inputs.requests[t] as usize;
        let s = self.inputs.session_ids[t];
        let stream = self.inputs.object_stream[o];
        let index = self.inputs.object_index[o];
        let ttl = 8.0 * self.gap();
        let previous = self.sessions[s as usize].filter(|c| c.active);
        let step = previous.is_some_and(|c| c.stream == stream && c.index + 1 == index);
        if let Some(c) = previous {
            self.gap_sum += (now - c.last) as f64;
            self.gap_n += 1.0;
        }
        match previous {
            Some(c) if step => {
                self.continued += 1.0;
                self.sessions[s as usize] = Some(Cursor {
                    index,
                    last: now,
                    at: t as u32,
                    run_left: self.run_left[t],
                    ..c
                });
            }
            _ => {
                if let Some(c) = previous {
                    self.leave(s, c);
                }
                if index == 0 {
                    self.base[stream as usize] += 1.0;
                } else {
                    self.mid[stream as usize] += 1.0;
                }
                self.cursors[stream as usize].push(s);
                self.sessions[s as usize] = Some(Cursor {
                    stream,
                    index,
                    last: now,
                    at: t as u32,
                    active: true,
                    run_left: self.run_left[t],
                });
            }
        }
        // Quiet cursors expire (a learned policy cannot tell an ended session otherwise).
        if t.is_multiple_of(1024) {
            let expired: Vec<(u32, Cursor)> = self
                .cursors
                .iter()
                .flatten()
                .filter_map(|&id| {
                    let c = self.sessions[id as usize]?;
                    ((now - c.last) as f64 > ttl).then_some((id, c))
                })
                .collect();
            for (id, c) in expired {
                self.leave(id, c);
                if let Some(c) = &mut self.sessions[id as usize] {
                    c.active = false;
                }
            }
        }
    }

    fn worth(&self, now: u64, object: u32) -> f64 {
        let stream = self.inputs.object_stream[object as usize] as usize;
        let k = self.inputs.object_index[object as usize];
        let h = self.hazard();
        let q = 1.0 - h;
        let (base, mid) = if self.knowledge.oracle_rates {
            (self.oracle_base[stream], self.oracle_mid[stream])
        } else {
            let elapsed = (now + 1) as f64;
            (self.base[stream] / elapsed, self.mid[stream] / elapsed)
        };
        let len = f64::from(self.inputs.stream_len[stream]);
        let reach = (1.0 - q.powi(k as i32 + 1)) / h;
        let mut rate = base * q.powi(k as i32) + mid * reach / len;
        let g = self.gap();
        for &id in &self.cursors[stream] {
            let Some(c) = self.sessions[id as usize] else {
                continue;
            };
            if c.index >= k {
                continue;
            }
            let d = k - c.index;
            if self.knowledge.oracle_remaining {
                if c.run_left < d {
                    continue;
                }
                if self.knowledge.oracle_timing {
                    let mut at = c.at;
                    for _ in 0..d {
                        at = self.next_by_session[at as usize];
                    }
                    rate += 1.0 / (f64::from(at) - now as f64).max(1.0);
                } else {
                    rate += 1.0 / (f64::from(d) * g).max(1.0);
                }
            } else {
                let quiet = (now - c.last) as f64;
                let alive_w = q * (-quiet / g).exp();
                let alive = alive_w / (alive_w + h);
                let p = alive * q.powi(d as i32 - 1);
                rate += p / (f64::from(d) * g).max(1.0);
            }
        }
        rate
    }

    fn remove_at(&mut self, pos: usize) {
        let object = self.resident.swap_remove(pos);
        self.position[object as usize] = ABSENT;
        if let Some(&moved) = self.resident.get(pos) {
            self.position[moved as usize] = pos as u32;
        }
        self.used -= u64::from(self.inputs.sizes[object as usize]);
    }

    fn offer(&mut self, now: u64, object: u32) {
        let size = u64::from(self.inputs.sizes[object as usize]);
        let capacity = self.inputs.capacity;
        if size > capacity {
            return;
        }
        let free = capacity - self.used;
        if size > free {
            let n = self.resident.len();
            let mut sample: Vec<(f64, usize)> = if self.knowledge.sample >= n {
                (0..n).map(|p| (0.0, p)).collect()
            } else {
                let mut v: Vec<(f64, usize)> = Vec::with_capacity(self.knowledge.sample);
                for _ in 0..self.knowledge.sample {
                    let p = self.below(n);
                    v.push((0.0, p));
                }
                v.sort_unstable_by_key(|e| e.1);
                v.dedup_by_key(|e| e.1);
                v
            };
            for e in &mut sample {
                e.0 = self.worth(now, self.resident[e.1]);
            }
            sample.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut freed = 0;
            let mut lost = 0.0;
            let mut victims = Vec::new();
            for (w, p) in sample {
                if free + freed >= size {
                    break;
                }
                let s = u64::from(self.inputs.sizes[self.resident[p] as usize]);
                freed += s;
                lost += w * s as f64;
                victims.push(p);
            }
            if free + freed < size || self.worth(now, object) * (size as f64) < lost {
                return;
            }
            victims.sort_unstable_by(|a, b| b.cmp(a));
            for p in victims {
                self.remove_at(p);
            }
        }
        self.position[object as usize] = self.resident.len() as u32;
        self.resident.push(object);
        self.used += size;
    }
}

/// Replays a trace through the model policy with the given knowledge.
pub(crate) fn replay_model(inputs: &ModelInputs<'_>, knowledge: Knowledge) -> Counts {
    let mut model = Model::new(inputs, knowledge);
    let mut counts = Counts::default();
    for (t, &object) in inputs.requests.iter().enumerate() {
        model.observe(t);
        let hit = model.position[object as usize] != ABSENT;
        if !hit {
            model.offer(t as u64, object);
        }
        if t >= inputs.warmup {
            counts.record(hit, inputs.sizes[object as usize]);
        }
    }
    counts
}

/// One diagnostic variant.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Variant {
    Belady,
    /// The edge's policy with a tweaked config: objects sampled per eviction, arrival memory.
    Edge {
        sample: usize,
        pool: usize,
        window_per_stream: usize,
    },
    Model(Knowledge),
}

impl Variant {
    fn label(self) -> String {
        match self {
            Variant::Belady => "Belady".to_owned(),
            Variant::Edge {
                sample,
                pool,
                window_per_stream,
            } => format!("edge s{sample} p{pool} w{window_per_stream}"),
            Variant::Model(k) => {
                let mut s = String::from("model");
                if k.oracle_rates {
                    s.push_str("+rates");
                }
                if k.oracle_remaining {
                    s.push_str("+remaining");
                }
                if k.oracle_timing {
                    s.push_str("+timing");
                }
                if k.sample == usize::MAX {
                    s.push_str(" exact");
                } else {
                    s.push_str(&format!(" s{}", k.sample));
                }
                s
            }
        }
    }
}

/// The variants `--diagnose` runs; `slow` adds near-exact eviction (1024 sampled objects),
/// which costs minutes per replay.
pub(crate) fn variants(slow: bool) -> Vec<Variant> {
    let model = |oracle_rates, oracle_remaining, oracle_timing, sample| {
        Variant::Model(Knowledge {
            oracle_rates,
            oracle_remaining,
            oracle_timing,
            sample,
        })
    };
    let edge = |sample, pool, window_per_stream| Variant::Edge {
        sample,
        pool,
        window_per_stream,
    };
    let mut list = vec![
        Variant::Belady,
        edge(64, 0, 8),
        edge(64, 16, 8),
        edge(64, 0, 64),
        model(false, false, false, 64),
        model(true, false, false, 64),
        model(false, true, false, 64),
        model(true, true, true, 64),
    ];
    if slow {
        list.extend([
            edge(1024, 0, 8),
            model(false, false, false, 1024),
            model(true, false, false, 1024),
            model(false, true, false, 1024),
            model(true, true, false, 1024),
            model(true, true, true, 1024),
        ]);
    }
    list
}

/// Runs every variant at every (trace, cache size) and prints each one's byte hit ratio as a
/// share of Belady's.
pub(crate) fn run(inputs: &super::Inputs<'_>, threads: usize, slow: bool) -> anyhow::Result<()> {
    let catalog = inputs.catalog;
    let r = catalog.n_renditions;
    let mut object_stream = vec![0u32; catalog.sizes.len()];
    let mut object_index = vec![0u32; catalog.sizes.len()];
    let mut stream_len = Vec::new();
    for (title, &segments) in catalog.n_segments.iter().enumerate() {
        for rendition_idx in 0..r {
            let stream = (title * r + rendition_idx) as u32;
            stream_len.push(segments);
            for seg in 0..segments {
                let o = catalog.object(title as u32, rendition_idx, seg) as usize;
                object_stream[o] = stream;
                object_index[o] = seg;
            }
        }
    }
    let variants = variants(slow);
    let mut jobs = Vec::new();
    for t in 0..inputs.traces.len() {
        for d in 0..inputs.capacities.len() {
            for v in 0..variants.len() {
                jobs.push((t, d, v));
            }
        }
    }
    let order: Vec<usize> = (0..jobs.len()).collect();
    let results = super::parallel_map(&jobs, &order, threads, |&(t, d, v)| {
        let trace = &inputs.traces[t];
        let capacity = inputs.capacities[d];
        let started = std::time::Instant::now();
        let counts = match variants[v] {
            Variant::Belady => super::replay_belady(
                &trace.requests,
                &catalog.sizes,
                &inputs.next[t],
                capacity,
                inputs.warmup,
            ),
            Variant::Edge {
                sample,
                pool,
                window_per_stream,
            } => {
                let mut config = super::VideoPolicyConfig::new(capacity, inputs.seed);
                config.sample = sample;
                config.pool = pool;
                config.window_per_stream = window_per_stream;
                super::replay_video(
                    &trace.requests,
                    &trace.session_ids,
                    inputs.paths,
                    &catalog.sizes,
                    config,
                    inputs.warmup,
                )
            }
            Variant::Model(knowledge) => replay_model(
                &ModelInputs {
                    requests: &trace.requests,
                    session_ids: &trace.session_ids,
                    sizes: &catalog.sizes,
                    object_stream: &object_stream,
                    object_index: &object_index,
                    stream_len: &stream_len,
                    capacity,
                    warmup: inputs.warmup,
                    seed: inputs.seed,
                },
                knowledge,
            ),
        };
        eprintln!(
            "  alpha {} catalog/{}: {} {:.2}% ({:.1} s)",
            trace.alpha,
            inputs.divisors[d],
            variants[v].label(),
            100.0 * counts.byte_hit_ratio(),
            started.elapsed().as_secs_f64()
        );
        counts.byte_hit_ratio()
    })?;
    let mut header = String::from("| Zipf α | cache |");
    let mut rule = String::from("| --- | --- |");
    for v in &variants {
        header.push_str(&format!(" {} |", v.label()));
        rule.push_str(" --- |");
    }
    println!("{header}\n{rule}");
    let per_point = variants.len();
    for t in 0..inputs.traces.len() {
        for d in 0..inputs.capacities.len() {
            let at = (t * inputs.capacities.len() + d) * per_point;
            let belady = results[at];
            let mut line = format!("| {} | 1/{} |", inputs.traces[t].alpha, inputs.divisors[d]);
            for v in 0..per_point {
                let x = results[at + v];
                if v == 0 {
                    line.push_str(&format!(" {:.1}% |", 100.0 * x));
                } else {
                    line.push_str(&format!(
                        " {:.3} |",
                        if belady > 0.0 { x / belady } else { 0.0 }
                    ));
                }
            }
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oracle_runs_count_the_consecutive_segments_left_and_the_model_stays_in_capacity() {
        // Two streams of 4 segments (objects 0-3 and 4-7), two sessions interleaved:
        // session 0 reads 0, 1, 2 then switches to 7; session 1 reads 4, 5.
        let requests = [0, 4, 1, 5, 2, 7];
        let session_ids = [0, 1, 0, 1, 0, 0];
        let object_stream = [0, 0, 0, 0, 1, 1, 1, 1];
        let object_index = [0, 1, 2, 3, 0, 1, 2, 3];
        let sizes = [100; 8];
        let inputs = ModelInputs {
            requests: &requests,
            session_ids: &session_ids,
            sizes: &sizes,
            object_stream: &object_stream,
            object_index: &object_index,
            stream_len: &[4, 4],
            capacity: 250,
            warmup: 0,
            seed: 1,
        };
        let (run_left, next) = oracle_runs(&inputs);
        assert_eq!(run_left, vec![2, 1, 1, 0, 0, 0]);
        assert_eq!(next, vec![2, 3, 4, u32::MAX, 5, u32::MAX]);
        for oracle in [false, true] {
            let knowledge = Knowledge {
                oracle_rates: oracle,
                oracle_remaining: oracle,
                oracle_timing: oracle,
                sample: 2,
            };
            let counts = replay_model(&inputs, knowledge);
            assert_eq!(counts.requests, 6);
            let mut model = Model::new(&inputs, knowledge);
            for (t, &object) in requests.iter().enumerate() {
                model.observe(t);
                if model.position[object as usize] == ABSENT {
                    model.offer(t as u64, object);
                }
                assert!(model.used <= inputs.capacity);
            }
        }
    }
}
