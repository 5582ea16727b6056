//! Sizing the process's file-descriptor table once, at start, for every service.
//!
//! Linux grows a process's descriptor table by doubling it (64, 256, 512, 1024, ... slots),
//! and in a process with more than one thread every growth first waits for an RCU grace
//! period (`synchronize_rcu` in the kernel's `expand_fdtable`). The thread that opens the
//! descriptor which does not fit sleeps uninterruptibly meanwhile: about 15 ms on the bench
//! machine. In a tokio service that thread is the runtime worker accepting a connection, and
//! the tasks queued on that worker wait with it, so a burst of new clients stalls each time
//! the number of open descriptors crosses a power of two. A scheduler trace of the edge's
//! cold-miss stampede (BENCHMARKS.md) showed exactly that: the worker went to sleep at the
//! 179th connection (about 256 descriptors in all) and the whole edge sat idle for 15 ms with
//! 200 requests waiting in its sockets.
//!
//! Opening one descriptor at the top of the expected range grows the table once, at start,
//! before any client waits; the kernel never shrinks it again.

use std::io;

/// Most slots reserved however high the open-file limit: 8 MiB of kernel table.
pub const MAX_SLOTS: u64 = 1 << 20;

/// Slots reserved by services that set no connection cap (origin, steering, control plane):
/// 512 KiB of kernel table, room for tens of thousands of clients.
pub const UNCAPPED_SLOTS: u64 = 1 << 16;

/// What a service does at start: raises the open-file limit to its hard limit, then grows the
/// descriptor table to `slots` (see [`reserve`]). Failures are logged, not fatal: the service
/// then runs with the table growing on demand.
pub fn prepare(slots: u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "Raised the open-file limit."),
        Err(e) => tracing::warn!(error = %e, "Could not raise the open-file limit."),
    }
    match reserve(slots) {
        Ok(n) => tracing::debug!(slots = n, "Sized the descriptor table."),
        Err(e) => tracing::warn!(error = %e, "Could not size the descriptor table."),
    }
}

/// Grows the descriptor table to hold at least `slots` descriptors (at most the open-file
/// limit and [`MAX_SLOTS`]). Returns the number of slots it made sure of.
pub fn reserve(slots: u64) -> io::Result<u64> {
    let (soft_limit, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let slots = slots.min(soft_limit).min(MAX_SLOTS);
    if slots <= 1 {
        return Ok(slots);
    }
    let highest = i32::try_from(slots - 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many slots"))?;
    let null = std::fs::File::open("/dev/null")?;
    // The lowest free descriptor at or above `highest`: it never replaces an open one. It
    // is closed again at once; the table keeps its size.
    let high = rustix::io::fcntl_dupfd_cloexec(&null, highest)?;
    drop(high);
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of this process's descriptor table, as the kernel reports it (`FDSize`).
    fn table_size() -> io::Result<u64> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "no FDSize in /proc/self/status")
            })
    }

    // One test: the table of the test process only grows, so the two checks must run in
    // this order.
    #[test]
    fn the_table_holds_the_reserved_slots_and_no_descriptor_is_left_open() {
        let limit = rlimit::increase_nofile_limit(u64::MAX).expect("the open-file limit");
        let want = 8192.min(limit);
        assert!(
            want > 1024,
            "this test needs an open-file limit above 1024, got {limit}"
        );
        let before = table_size().expect("FDSize");
        assert!(
            before < want,
            "the test process already has a table of {before} slots; nothing to measure"
        );
        assert_eq!(reserve(want).expect("reserve"), want);

        assert!(table_size().expect("FDSize") >= want);
        // Reserving opens a descriptor high in the new table and closes it: none is left
        // there. (Tests running beside this one open and close low numbers meanwhile, so
        // a count of all open descriptors would not say anything.)
        let high: Vec<u64> = std::fs::read_dir("/proc/self/fd")
            .expect("fd list")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd >= before)
            .collect();
        assert!(high.is_empty(), "reserve left descriptors {high:?} open");

        // A request above the open-file limit is cut to it.
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("limit");
        let got = reserve(u64::MAX).expect("reserve");
        assert_eq!(got, soft.min(MAX_SLOTS));
        assert!(table_size().expect("FDSize") >= got);
    }
}
