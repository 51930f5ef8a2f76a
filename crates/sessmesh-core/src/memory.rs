//! The memory bound: `maxmemory` and what a node does at it
//! (`maxmemory-policy`), with Redis's names and units.
//!
//! A node counts what it holds ([`crate::MemoryUse`] for the stored
//! sessions, plus hints and consensus state) and, over its bound, refuses
//! the writes that would add to it, as Redis's `noeviction` does: deletes,
//! expiries, reads and the replication of other nodes' writes go on.

use std::fmt;
use std::str::FromStr;

/// What a node does when a write would take it past `maxmemory`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EvictionPolicy {
    /// Refuse the write (`OOM command not allowed when used memory >
    /// 'maxmemory'.`); reads and deletes go on.
    #[default]
    NoEviction,
    /// Evict the least recently used session.
    AllKeysLru,
    /// Evict the least frequently used session.
    AllKeysLfu,
    /// Evict the least recently used session among those with a deadline.
    VolatileLru,
    /// Evict the session with the nearest deadline.
    VolatileTtl,
    /// Evict a session at random.
    AllKeysRandom,
}

impl EvictionPolicy {
    /// Every policy, as `maxmemory-policy` names them.
    pub const ALL: [EvictionPolicy; 6] = [
        EvictionPolicy::NoEviction,
        EvictionPolicy::AllKeysLru,
        EvictionPolicy::AllKeysLfu,
        EvictionPolicy::VolatileLru,
        EvictionPolicy::VolatileTtl,
        EvictionPolicy::AllKeysRandom,
    ];

    /// Its name, as Redis writes it.
    pub fn name(self) -> &'static str {
        match self {
            EvictionPolicy::NoEviction => "noeviction",
            EvictionPolicy::AllKeysLru => "allkeys-lru",
            EvictionPolicy::AllKeysLfu => "allkeys-lfu",
            EvictionPolicy::VolatileLru => "volatile-lru",
            EvictionPolicy::VolatileTtl => "volatile-ttl",
            EvictionPolicy::AllKeysRandom => "allkeys-random",
        }
    }
}

impl fmt::Display for EvictionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EvictionPolicy {
    type Err = String;

    /// A policy by its Redis name, in any case.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
                format!("{s:?} is not one of {}", names.join(", "))
            })
    }
}

/// A size as Redis's config reads it: a number of bytes, or with a unit,
/// any case: `k` (1,000), `kb` (1,024), `m` (1,000,000), `mb` (1,048,576),
/// `g`, `gb`, and `b`.
///
/// # Errors
/// What is wrong with it.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(digits_end);
    let multiplier: usize = match unit {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} is not a size: a number of bytes, or with k, kb, m, mb, g or gb"
            ));
        }
    };
    let number: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size: it must begin with a number"))?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A node's memory as it counts it, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// The stored sessions.
    pub sessions: crate::MemoryUse,
    /// Hints kept for replicas that missed writes.
    pub hints: usize,
    /// Consensus state kept per instance.
    pub consensus: usize,
    /// Evictions whose tombstones wait to be forgotten.
    pub evictions: usize,
    /// The rest of what the process took since the node started, as its
    /// host measured it last ([`Node::set_other_memory`](crate::Node::set_other_memory)):
    /// messages queued and in flight, timers, buffers; 0 when the host
    /// measures nothing. Reported, not evicted for (Redis's
    /// `mem_not_counted_for_evict`).
    pub other: usize,
    /// The bound, `maxmemory` (0: none).
    pub max: usize,
    /// What happens at the bound.
    pub policy: EvictionPolicy,
    /// Sessions the node evicted since it started.
    pub evicted_keys: u64,
}

impl MemoryReport {
    /// Everything counted (Redis's `used_memory`).
    pub fn used(&self) -> usize {
        self.evicted_for() + self.other
    }

    /// What the bound applies to: everything counted but
    /// [`other`](Self::other).
    pub fn evicted_for(&self) -> usize {
        self.sessions.total() + self.hints + self.consensus + self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_redis_reads_them() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1234"), Ok(1234));
        assert_eq!(parse_bytes("64mb"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2m"), Ok(2_000_000));
        assert_eq!(parse_bytes("3kb"), Ok(3072));
        assert_eq!(parse_bytes("1g"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("10b"), Ok(10));
        for bad in ["", "mb", "-1", "1.5mb", "12 tb", "99999999999999999999gb"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policies_go_by_redis_names() {
        for policy in EvictionPolicy::ALL {
            assert_eq!(policy.name().parse::<EvictionPolicy>(), Ok(policy));
        }
        assert_eq!("AllKeys-LRU".parse(), Ok(EvictionPolicy::AllKeysLru));
        let err = "lru".parse::<EvictionPolicy>().unwrap_err();
        assert!(err.contains("noeviction, allkeys-lru"), "{err}");
    }
}
