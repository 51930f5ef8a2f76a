//! The memory bound (see [`crate::memory`]): what the node counts, and the
//! writes it refuses over `max_memory_bytes`.

use super::*;
use crate::memory::{EvictionPolicy, MemoryReport};

impl Node {
    /// What the node holds, as it counts it, with its bound.
    pub fn memory(&self) -> MemoryReport {
        MemoryReport {
            sessions: self.store.memory(),
            hints: self.hints.bytes(),
            consensus: self.acceptors.memory(),
            evictions: self.eviction_memory(),
            other: self.eviction.other,
            max: self.config.max_memory_bytes,
            policy: self.config.eviction_policy,
            evicted_keys: self.stats.evicted_keys,
        }
    }

    /// Sets what the node does over its bound, from now on.
    pub fn set_eviction_policy(&mut self, policy: EvictionPolicy) {
        self.config.eviction_policy = policy;
        self.eviction_clock(None);
    }

    /// Keeps the clock the store's access words follow current, with the
    /// policy they serve (`now_ms`: the time, when the call has it).
    pub(super) fn eviction_clock(&self, now_ms: Option<u64>) {
        self.store.set_clock(
            now_ms.unwrap_or_else(|| self.store.clock()),
            self.config.eviction_policy,
        );
    }

    /// Sets the memory bound, bytes (0: none), from now on.
    pub fn set_max_memory(&mut self, bytes: usize) {
        self.config.max_memory_bytes = bytes;
        self.store.set_memory_limit(bytes);
        self.hints.set_max_bytes(hint_bound(&self.config));
        self.count_memory();
    }

    /// Sets what the process holds for this node beyond what the node
    /// counts itself, bytes, as the host measures it (its allocator's
    /// figure less the node's count, over what it was at the start): the
    /// messages queued and in flight, the timers, the transport's buffers.
    /// It is reported from now on as [`MemoryReport::other`], and not
    /// evicted for: it is mostly messages and requests in flight, which
    /// evicting adds to (each eviction is a replicated write), so evicting
    /// for it would feed itself. Redis leaves its replicas' output buffers
    /// out of the figure it evicts by for the same reason. Hosts that
    /// measure nothing leave it at 0.
    pub fn set_other_memory(&mut self, bytes: usize) {
        self.eviction.other = bytes;
    }

    /// Counts again what the node holds besides the stored entries, which
    /// the store weighs against the bound on every write (each sweep
    /// period).
    pub(super) fn count_memory(&mut self) {
        let memory = self.memory();
        self.eviction.counted_elsewhere = memory.hints + memory.consensus;
        self.sync_other_memory();
    }

    /// Tells the store what the node holds besides its sessions and counts
    /// against the bound: hints and consensus state as last counted, and
    /// the evictions waiting as they are now.
    pub(super) fn sync_other_memory(&self) {
        self.store
            .set_other_memory(self.eviction.counted_elsewhere + self.eviction_memory());
    }

    /// Refuses `call`, a write that adds, when the node is over its bound
    /// and eviction (by the policy) cannot make room; whether it did.
    pub(super) fn refuse_over_memory(&mut self, call: CallId, now_ms: u64) -> bool {
        if self.make_room(now_ms) {
            return false;
        }
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

/// What the hints may take: `max_hint_bytes`, and under a memory bound at
/// most an eighth of it, so that hints for a replica down for long do not
/// push the sessions out (past it the oldest go, and anti-entropy repairs).
pub(super) fn hint_bound(config: &Config) -> usize {
    match config.max_memory_bytes {
        0 => config.max_hint_bytes,
        max => config.max_hint_bytes.min(max / 8),
    }
}
