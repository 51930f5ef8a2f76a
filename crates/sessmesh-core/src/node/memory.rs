//! The memory bound (see [`crate::memory`]): what the node counts, and the
//! writes it refuses over `max_memory_bytes`.

use super::*;
use crate::memory::MemoryReport;

impl Node {
    /// What the node holds, as it counts it, with its bound.
    pub fn memory(&self) -> MemoryReport {
        MemoryReport {
            sessions: self.store.memory(),
            hints: self.hints.bytes(),
            consensus: self.acceptors.memory(),
            max: self.config.max_memory_bytes,
            policy: self.config.eviction_policy,
        }
    }

    /// Sets the memory bound, bytes (0: none), from now on.
    pub fn set_max_memory(&mut self, bytes: usize) {
        self.config.max_memory_bytes = bytes;
        self.store.set_memory_limit(bytes);
        self.count_memory();
    }

    /// Counts again what the node holds besides the stored entries, which
    /// the store weighs against the bound on every write (each sweep
    /// period).
    pub(super) fn count_memory(&mut self) {
        let memory = self.memory();
        self.store
            .set_other_memory(memory.used() - memory.sessions.entries);
    }

    /// Refuses `call`, a write that adds, when the node is over its bound;
    /// whether it did.
    pub(super) fn refuse_over_memory(&mut self, call: CallId) -> bool {
        let Some((used, max)) = self.store.over_limit() else {
            return false;
        };
        self.stats.writes_refused_over_memory += 1;
        self.effects.push(Effect::Done {
            call,
            outcome: Outcome::OverMemory { used, max },
        });
        true
    }
}
