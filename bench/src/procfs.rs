//! What the bench reads from `/proc`: CPU time and resident memory of server processes, the
//! children of a process, and a description of the machine.

use std::fs;

use anyhow::Context;

/// Clock ticks per second for the `utime`/`stime` fields of `/proc/<pid>/stat`. Linux reports
/// them in USER_HZ, which is 100 on every architecture the bench runs on; `getconf` confirms.
pub fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The fields of `/proc/<pid>/stat` after the command name, which may itself hold spaces and
/// parentheses: field 3 (`state`) is index 0.
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected /proc/{pid}/stat: {text}"))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU time of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15, so indexes 11 and 12 here.
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("/proc/{pid}/stat is too short"))?
            .parse::<u64>()
            .with_context(|| format!("/proc/{pid}/stat field {}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// CPU time of this process plus that of its children that have exited and been waited for
/// (the load tools, once they are done), in clock ticks.
pub fn own_and_reaped_children_ticks() -> anyhow::Result<u64> {
    // utime, stime, cutime, cstime: fields 14 to 17.
    own_stat_sum(11..=14)
}

/// CPU time of this process's children that have exited and been waited for, in clock ticks
/// (what `getrusage(RUSAGE_CHILDREN)` reports, at clock-tick resolution).
pub fn reaped_children_ticks() -> anyhow::Result<u64> {
    // cutime and cstime: fields 16 and 17.
    own_stat_sum(13..=14)
}

/// The sum of this process's `/proc/self/stat` fields at `indices` (counted from the third
/// field, after the command name).
fn own_stat_sum(indices: std::ops::RangeInclusive<usize>) -> anyhow::Result<u64> {
    let fields = stat_fields(std::process::id())?;
    indices
        .map(|i| -> anyhow::Result<u64> {
            Ok(fields
                .get(i)
                .context("/proc/self/stat is too short")?
                .parse::<u64>()?)
        })
        .sum()
}

/// The direct children of `parent` (for nginx: its workers).
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid)
                .ok()
                .and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                == Some(parent)
        })
        .collect()
}

/// Resident memory of a process, from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rss {
    /// `VmRSS`: everything resident.
    pub total: u64,
    /// `RssAnon`: heap, stacks and other private memory.
    pub anon: u64,
    /// `RssFile`: pages of mapped files (for the edge, its memory-mapped content).
    pub file: u64,
}

impl std::ops::Add for Rss {
    type Output = Rss;
    fn add(self, o: Rss) -> Rss {
        Rss {
            total: self.total + o.total,
            anon: self.anon + o.anon,
            file: self.file + o.file,
        }
    }
}

pub fn rss(pid: u32) -> anyhow::Result<Rss> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    Ok(Rss {
        total: kib("VmRSS:"),
        anon: kib("RssAnon:"),
        file: kib("RssFile:"),
    })
}

/// Number of threads of a process.
pub fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Busy and total jiffies of the whole machine, from the first line of `/proc/stat`.
pub fn machine_jiffies() -> anyhow::Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// The machine the figures come from.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|v| v.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory_gib,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned()),
    }
}

/// `pid` and all its descendants (a server's master and workers, a wrapper's child).
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let children = children(pids[i]);
        pids.extend(children);
        i += 1;
    }
    pids
}

/// CPU time of `pids` so far, in clock ticks (processes that are gone count nothing).
pub fn total_cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ticks(*p).ok()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        assert!(own_and_reaped_children_ticks().is_ok());
        let r = rss(me).expect("rss");
        assert!(r.total > 0 && r.anon > 0);
        assert!(threads(me) >= 1);
        let (busy, total) = machine_jiffies().expect("jiffies");
        assert!(busy <= total);
    }
}
