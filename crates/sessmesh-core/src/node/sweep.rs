//! Sweeping: expired sessions and old tombstones leave the store a few
//! partitions at a time, and clears older than the tombstone grace go.

use super::*;

impl Node {
    /// Sweeps the next few partitions, so the whole store is swept every
    /// `partition_count / PARTITIONS_PER_SWEEP` sweep periods.
    pub(super) fn sweep(&mut self, now_ms: u64) {
        const PARTITIONS_PER_SWEEP: u32 = 4;
        for _ in 0..PARTITIONS_PER_SWEEP.min(self.store.partition_count()) {
            self.store.sweep(PartitionId(self.sweep_cursor), now_ms);
            self.sweep_cursor = (self.sweep_cursor + 1) % self.store.partition_count();
        }
        self.store.forget_clears(now_ms);
    }
}
