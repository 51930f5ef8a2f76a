//! What the eviction policies know of each stored session: when it was last
//! used (LRU) or how often (LFU), kept in one word beside its packed bytes
//! and updated under the partition's read lock; and the sampling that finds
//! the sessions to evict, as Redis's approximated LRU and LFU do.
//!
//! The word holds, by policy:
//! - LRU (`allkeys-lru`, `volatile-lru`, and the others): the store's clock
//!   at the last use, in [`CLOCK_UNIT_MS`] units, modulo 2^32;
//! - LFU (`allkeys-lfu`): Redis's logarithmic counter in the low 8 bits
//!   (new sessions start at [`LFU_INIT`], each use raises it with
//!   probability `1 / ((counter - LFU_INIT) * LFU_LOG_FACTOR + 1)`), and in
//!   the high 24 bits the minute it was last decayed: it falls by one per
//!   minute unused.
//!
//! The clock is the owner's: the node sets it as time passes
//! ([`Store::set_clock`]), so readers on other threads read no clock. The
//! probability draw is a hash of the key, the counter and a count of the
//! thread's draws: the store stays free of unseeded randomness.

use std::sync::atomic::AtomicU64;

use super::locking::Slot;
use super::*;
use crate::memory::EvictionPolicy;

/// The LRU clock's unit, ms.
pub(super) const CLOCK_UNIT_MS: u64 = 10;
/// An LFU counter's start, so a new session is not the first to go.
pub(super) const LFU_INIT: u32 = 5;
/// How slowly an LFU counter rises (Redis's `lfu-log-factor`).
const LFU_LOG_FACTOR: u32 = 10;

/// The clock and the policy the access words follow.
#[derive(Debug, Default)]
pub(super) struct AccessClock {
    /// Wall-clock ms, as the owner last set it.
    pub(super) now_ms: AtomicU64,
    /// Whether the words count uses (LFU) rather than time them (LRU).
    pub(super) lfu: AtomicBool,
}

impl AccessClock {
    fn lru_now(&self) -> u32 {
        // Modulo 2^32 by design: ages are wrapping differences.
        u32::try_from((self.now_ms.load(Ordering::Relaxed) / CLOCK_UNIT_MS) % (1 << 32))
            .unwrap_or(0)
    }

    fn minutes(&self) -> u32 {
        u32::try_from((self.now_ms.load(Ordering::Relaxed) / 60_000) % (1 << 24)).unwrap_or(0)
    }

    /// The word of a session just stored.
    pub(super) fn fresh(&self) -> u32 {
        if self.lfu.load(Ordering::Relaxed) {
            self.minutes() << 8 | LFU_INIT
        } else {
            self.lru_now()
        }
    }

    /// Records a use of the session in `slot`, whose key hashes to `hash`.
    pub(super) fn used(&self, slot: &Slot, hash: u64) {
        let word = if self.lfu.load(Ordering::Relaxed) {
            let old = slot.access.load(Ordering::Relaxed);
            let counter = self.decayed(old);
            let draw = mix(hash ^ mix(next_draw() ^ u64::from(old)));
            self.minutes() << 8 | log_increment(counter, draw)
        } else {
            self.lru_now()
        };
        // A lost race between two readers loses one use: no matter.
        slot.access.store(word, Ordering::Relaxed);
    }

    /// An LFU word's counter after its decay: one less per minute unused.
    fn decayed(&self, word: u32) -> u32 {
        let elapsed = self.minutes().wrapping_sub(word >> 8) & 0xFF_FFFF;
        (word & 0xFF).saturating_sub(elapsed)
    }

    /// How good a victim the session with `word` is under `policy`, given
    /// its deadline: the higher the better; `None` when the policy never
    /// evicts it.
    pub(super) fn victim_score(
        &self,
        policy: EvictionPolicy,
        word: u32,
        deadline_ms: Option<u64>,
    ) -> Option<u64> {
        let idle = || u64::from(self.lru_now().wrapping_sub(word));
        match policy {
            EvictionPolicy::NoEviction => None,
            EvictionPolicy::AllKeysLru => Some(idle()),
            EvictionPolicy::AllKeysLfu => Some(255 - u64::from(self.decayed(word))),
            EvictionPolicy::VolatileLru => deadline_ms.map(|_| idle()),
            EvictionPolicy::VolatileTtl => deadline_ms.map(|d| u64::MAX - d),
            EvictionPolicy::AllKeysRandom => Some(0),
        }
    }
}

/// Raises an LFU counter, with probability falling as it grows.
fn log_increment(counter: u32, draw: u64) -> u32 {
    if counter >= 255 {
        return 255;
    }
    let base = counter.saturating_sub(LFU_INIT);
    // `draw` is uniform over u64: it falls under u64::MAX / (base * factor
    // + 1) with the probability Redis gives.
    let threshold = u64::MAX / u64::from(base * LFU_LOG_FACTOR + 1);
    if draw <= threshold {
        counter + 1
    } else {
        counter
    }
}

std::thread_local! {
    /// Each thread's count of LFU draws: what makes two uses of one
    /// session draw differently. Deterministic per thread.
    static DRAWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn next_draw() -> u64 {
    DRAWS.with(|draws| {
        let next = draws.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        draws.set(next);
        next
    })
}

/// A 64-bit finalizer (SplitMix64's): an even spread from any input.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A session the sampling found, with how good a victim it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The session's key.
    pub key: Bytes,
    /// The policy's score: higher goes first.
    pub score: u64,
}

impl Store {
    /// Sets the clock the access words follow (wall-clock ms), and whether
    /// they count uses (for `allkeys-lfu`) or time them.
    pub fn set_clock(&self, now_ms: u64, policy: EvictionPolicy) {
        let clock = &self.shared.access;
        clock.now_ms.store(now_ms, Ordering::Relaxed);
        clock
            .lfu
            .store(policy == EvictionPolicy::AllKeysLfu, Ordering::Relaxed);
    }

    /// Records a use of the session under `key` (a read a replica serves),
    /// for the eviction policy.
    pub fn note_use(&self, key: &[u8]) {
        let hash = key_hash(key);
        let partition = self.shared.read(partition_of(hash, self.partition_count()));
        if let Some(slot) = locking::find(&partition.table, hash, key) {
            self.shared.access.used(slot, hash);
        }
    }

    /// The clock the access words follow, as last set.
    pub fn clock(&self) -> u64 {
        self.shared.access.now_ms.load(Ordering::Relaxed)
    }

    /// Up to `count` visible sessions that `policy` may evict, with their
    /// scores, found from the slots `random` picks: a partition, then the
    /// occupied slots from a place in its table, then other partitions
    /// while `count` are not found. Tombstones,
    /// sessions a reader at `now_ms` no longer sees, and partitions the
    /// node does not replicate (see [`Store::set_replicated`]) are skipped.
    pub fn sample_victims(
        &self,
        policy: EvictionPolicy,
        random: u64,
        count: usize,
        now_ms: u64,
    ) -> Vec<Candidate> {
        let partitions = u64::from(self.partition_count());
        let mut found = Vec::with_capacity(count);
        // A partition may hold fewer than `count` (or none): go on to others,
        // a few times `count` at most.
        for attempt in 0..4 * count as u64 {
            let draw = mix(random.wrapping_add(attempt));
            let index = u32::try_from(draw % partitions).unwrap_or(0);
            // A partition this node no longer replicates waits for its
            // handoff: its sessions are not this node's to evict.
            if self.shared.replicas[index as usize].load(Ordering::Acquire) == 0 {
                continue;
            }
            let partition = self.shared.read(PartitionId(index));
            let table = &partition.table;
            let buckets = table.num_buckets();
            if table.is_empty() {
                continue;
            }
            let start = (draw >> 32) as usize % buckets;
            for index in (start..buckets).chain(0..start) {
                let Some(slot) = table.get_bucket(index) else {
                    continue;
                };
                let packed = Packed::parse(slot);
                if !packed.is_visible(|| now_ms) {
                    continue;
                }
                let word = slot.access.load(Ordering::Relaxed);
                if let Some(score) =
                    self.shared
                        .access
                        .victim_score(policy, word, packed.deadline_ms())
                {
                    found.push(Candidate {
                        key: Bytes::copy_from_slice(packed.key),
                        score,
                    });
                    if found.len() == count {
                        return found;
                    }
                }
            }
        }
        found
    }

    /// How good a victim the session under `key` is under `policy` now;
    /// `None` when it is gone, not visible, or not one the policy evicts.
    pub fn victim_score(&self, key: &[u8], policy: EvictionPolicy, now_ms: u64) -> Option<u64> {
        let hash = key_hash(key);
        let partition = self.shared.read(partition_of(hash, self.partition_count()));
        let slot = locking::find(&partition.table, hash, key)?;
        let packed = Packed::parse(slot);
        if !packed.is_visible(|| now_ms) {
            return None;
        }
        let word = slot.access.load(Ordering::Relaxed);
        self.shared
            .access
            .victim_score(policy, word, packed.deadline_ms())
    }

    /// Forgets the tombstone an eviction stamped `stamp` left under `key`,
    /// once every replica has it: a later write, or anything else stored
    /// since, keeps it. Returns whether it went.
    pub fn forget_evicted(&mut self, key: &[u8], stamp: Stamp) -> bool {
        let hash = key_hash(key);
        let partition = partition_of(hash, self.partition_count());
        let mut locked = self.shared.write(partition);
        let Partition { table, digest } = &mut *locked;
        let Ok(slot) = table.find_entry(slot_hash(hash), |s| packed::key_of(s) == key) else {
            return false;
        };
        let packed = Packed::parse(slot.get());
        if !(packed.is_tombstone() && packed.to_session().is_eviction_of(stamp)) {
            return false;
        }
        let fingerprint = packed.fingerprint();
        let (old, _) = slot.remove();
        digest.remove(hash, fingerprint);
        self.shared.len.fetch_sub(1, Ordering::Relaxed);
        self.shared.removed(old.len());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lfu_counters_rise_ever_more_slowly_and_decay_by_the_minute() {
        let clock = AccessClock::default();
        clock.lfu.store(true, Ordering::Relaxed);
        let slot = Slot::new(Box::new([]), clock.fresh());
        let mut after = Vec::new();
        for i in 0..100_000u64 {
            clock.used(&slot, i);
            if [10, 1_000, 99_999].contains(&i) {
                after.push(slot.access.load(Ordering::Relaxed) & 0xFF);
            }
        }
        // Redis's table for lfu-log-factor 10: about 18 after 100 uses, 142
        // after 100,000 (from 5, not 0, here).
        assert!(after[0] > LFU_INIT && after[0] < 15, "{after:?}");
        assert!(after[1] > 15 && after[1] < 40, "{after:?}");
        assert!(after[2] > 100 && after[2] < 200, "{after:?}");
        let word = slot.access.load(Ordering::Relaxed);
        clock.now_ms.store(3 * 60_000, Ordering::Relaxed);
        assert_eq!(clock.decayed(word), (word & 0xFF) - 3);
    }

    #[test]
    fn scores_rank_victims_as_each_policy_says() {
        let clock = AccessClock::default();
        clock.now_ms.store(100_000, Ordering::Relaxed);
        let old = clock.fresh();
        clock.now_ms.store(200_000, Ordering::Relaxed);
        let recent = clock.fresh();
        let lru = |w| clock.victim_score(EvictionPolicy::AllKeysLru, w, None);
        assert!(lru(old) > lru(recent));
        assert_eq!(
            clock.victim_score(EvictionPolicy::VolatileLru, old, None),
            None
        );
        let ttl = |d| clock.victim_score(EvictionPolicy::VolatileTtl, old, Some(d));
        assert!(ttl(1_000) > ttl(2_000));
        assert_eq!(
            clock.victim_score(EvictionPolicy::NoEviction, old, None),
            None
        );
    }
}
