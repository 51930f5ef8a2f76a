//! The node's allocator: jemalloc, whose figure of what it has handed out
//! the node reports beyond its own count (messages queued and in flight,
//! timers, buffers) inside `used_memory`, as Redis's `used_memory` is its
//! allocator's figure. See docs/architecture.md#memory.

use std::sync::OnceLock;

use tikv_jemalloc_ctl::{Access, AsName, epoch, epoch_mib, stats};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// What the allocator has handed out and not taken back, bytes: its
/// statistics refreshed, then read (`None` if jemalloc refuses either).
pub(crate) fn allocated() -> Option<usize> {
    static MIBS: OnceLock<Option<(epoch_mib, stats::allocated_mib)>> = OnceLock::new();
    let (refresh, allocated) = MIBS
        .get_or_init(|| Some((epoch::mib().ok()?, stats::allocated::mib().ok()?)))
        .as_ref()?;
    refresh.advance().ok()?;
    allocated.read().ok()
}

/// Turns off jemalloc's cache of freed blocks for the calling thread. The
/// caches keep blocks one thread frees for that thread to allocate again,
/// and under eviction (sessions stored on one thread, evicted on another)
/// they left slabs partly empty: `bench/bounded.sh` measured 14 MiB of
/// such pages on 64 MiB of sessions with them, 2 MiB without (see
/// docs/BENCHMARKS.md). Every thread of the node calls it first.
pub(crate) fn without_thread_cache() {
    if let Err(e) = b"thread.tcache.enabled\0".name().write(false) {
        tracing::debug!("jemalloc kept this thread's cache: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figure_follows_what_is_allocated() {
        // Other tests of this binary allocate on other threads meanwhile:
        // a block far larger than theirs, and a margin for them.
        const BLOCK: usize = 64 << 20;
        const MARGIN: usize = 8 << 20;
        let before = allocated().expect("jemalloc's statistics");
        let held = vec![1u8; BLOCK];
        let during = allocated().expect("jemalloc's statistics");
        assert!(during >= before + BLOCK - MARGIN, "{before} then {during}");
        drop(held);
        let after = allocated().expect("jemalloc's statistics");
        assert!(after <= during - BLOCK + MARGIN, "{during} then {after}");
    }
}
