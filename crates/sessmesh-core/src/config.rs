//! The settings the core's state machines share.

use crate::Error;
use crate::memory::EvictionPolicy;

/// Cluster-wide data settings. Every member must agree on `partition_count` and
/// `replication_factor`; membership refuses a peer that does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Number of partitions keys hash into: a power of two from 1 to 65,536.
    /// Fixed for the life of a cluster. More partitions spread load more evenly
    /// (see [`crate::partition`]) at the cost of more digest rounds.
    pub partition_count: u32,
    /// How many members hold a copy of each partition, at least 1.
    pub replication_factor: usize,
    /// A remote stamp further ahead of local time than this is refused, so one
    /// peer with a runaway clock cannot win every conflict. Milliseconds.
    pub max_clock_drift_ms: u64,
    /// How long past its covered deadline a tombstone is kept, and how long a
    /// deleted-field marker is kept. It bounds how long a replica may be cut off
    /// and still be repaired without resurrecting deleted data, like Cassandra's
    /// `gc_grace_seconds`. Milliseconds.
    pub tombstone_grace_ms: u64,
    /// The largest message accepted from a peer, in bytes; a length prefix over
    /// it is refused before any buffer is allocated.
    pub max_frame_bytes: usize,
    /// How long a coordinator waits for replicas to answer a write or a read
    /// before it answers the client with what it has. Milliseconds.
    pub request_timeout_ms: u64,
    /// Bytes of hints (writes kept for replicas that missed them) a node
    /// holds; past it the oldest go, counted, and anti-entropy repairs instead.
    pub max_hint_bytes: usize,
    /// How often each node compares digests with the other replicas of its
    /// partitions. A membership change starts a round at once. Milliseconds.
    pub anti_entropy_period_ms: u64,
    /// Most sessions one anti-entropy answer carries, which bounds the
    /// bandwidth repair takes from client traffic; what is left over goes in
    /// the next round.
    pub anti_entropy_max_entries: usize,
    /// Repair bandwidth: session bytes a node sends for anti-entropy per
    /// second, so repair after a long partition cannot starve client traffic.
    pub anti_entropy_bytes_per_sec: u64,
    /// How often the node sweeps a few partitions for expired sessions and
    /// old tombstones. Milliseconds.
    pub sweep_period_ms: u64,
    /// A read asks only as many replicas as its level needs; if they have not
    /// all answered after this long, it asks the others too (Cassandra's
    /// speculative retry). Milliseconds; 0 asks every replica at once.
    pub speculative_read_ms: u64,
    /// The memory bound, bytes, as Redis's `maxmemory`: 0 for none. Over
    /// it the node acts by `eviction_policy` (see [`crate::memory`]).
    pub max_memory_bytes: usize,
    /// What the node does over `max_memory_bytes` (`maxmemory-policy`).
    pub eviction_policy: EvictionPolicy,
}

impl Config {
    /// The largest partition count.
    pub const MAX_PARTITIONS: u32 = 1 << 16;
    /// The largest replication factor.
    pub const MAX_REPLICATION_FACTOR: usize = 64;
}

impl Default for Config {
    fn default() -> Self {
        Config {
            partition_count: 256,
            replication_factor: 3,
            max_clock_drift_ms: 500,
            tombstone_grace_ms: 60 * 60 * 1000,
            max_frame_bytes: 16 << 20,
            request_timeout_ms: 2_000,
            max_hint_bytes: 64 << 20,
            anti_entropy_period_ms: 10_000,
            anti_entropy_max_entries: 2_000,
            anti_entropy_bytes_per_sec: 64 << 20,
            sweep_period_ms: 100,
            speculative_read_ms: 20,
            max_memory_bytes: 0,
            eviction_policy: EvictionPolicy::NoEviction,
        }
    }
}

impl Config {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first setting that is wrong and why.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid =
            |setting: &'static str, reason: String| Err(Error::InvalidConfig { setting, reason });
        if !self.partition_count.is_power_of_two() || self.partition_count > Self::MAX_PARTITIONS {
            return invalid(
                "partition_count",
                format!(
                    "{} is not a power of two from 1 to {}",
                    self.partition_count,
                    Self::MAX_PARTITIONS
                ),
            );
        }
        if self.replication_factor == 0 {
            return invalid("replication_factor", "must be at least 1".into());
        }
        if self.replication_factor > Self::MAX_REPLICATION_FACTOR {
            return invalid(
                "replication_factor",
                format!("must be at most {}", Self::MAX_REPLICATION_FACTOR),
            );
        }
        if self.max_clock_drift_ms == 0 {
            return invalid(
                "max_clock_drift_ms",
                "must be above 0, or no peer's write would be accepted".into(),
            );
        }
        for (setting, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("anti_entropy_period_ms", self.anti_entropy_period_ms),
            ("sweep_period_ms", self.sweep_period_ms),
        ] {
            if value == 0 {
                return invalid(setting, "must be above 0".into());
            }
        }
        if self.anti_entropy_bytes_per_sec == 0 {
            return invalid("anti_entropy_bytes_per_sec", "must be above 0".into());
        }
        if self.anti_entropy_max_entries == 0 {
            return invalid("anti_entropy_max_entries", "must be at least 1".into());
        }
        if self.max_frame_bytes < 1024 {
            return invalid(
                "max_frame_bytes",
                format!("{} is below the 1024-byte minimum", self.max_frame_bytes),
            );
        }
        if self.max_frame_bytes > u32::MAX as usize {
            return invalid(
                "max_frame_bytes",
                format!(
                    "{} does not fit a 32-bit length prefix",
                    self.max_frame_bytes
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_setting_and_the_reason() {
        let cases = [
            (
                Config {
                    partition_count: 100,
                    ..Config::default()
                },
                "partition_count",
                "100 is not a power of two",
            ),
            (
                Config {
                    partition_count: 1 << 17,
                    ..Config::default()
                },
                "partition_count",
                "131072",
            ),
            (
                Config {
                    replication_factor: 0,
                    ..Config::default()
                },
                "replication_factor",
                "at least 1",
            ),
            (
                Config {
                    replication_factor: 65,
                    ..Config::default()
                },
                "replication_factor",
                "at most 64",
            ),
            (
                Config {
                    max_clock_drift_ms: 0,
                    ..Config::default()
                },
                "max_clock_drift_ms",
                "above 0",
            ),
            (
                Config {
                    max_frame_bytes: 10,
                    ..Config::default()
                },
                "max_frame_bytes",
                "below",
            ),
        ];
        for (config, setting, reason) in cases {
            let err = config.validate().expect_err(setting);
            let text = err.to_string();
            assert!(text.contains(setting) && text.contains(reason), "{text}");
        }
    }
}
