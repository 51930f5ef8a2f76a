//! What a node counts of its own work, for metrics.

/// Counts of what a node's replication did since it started, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Acknowledgements from replicas of writes this node coordinated.
    pub replica_acks: u64,
    /// Coordinated writes answered `TooFewAcks` because replicas did not
    /// answer in time.
    pub write_timeouts: u64,
    /// Coordinated reads answered `TooFewAnswers` because replicas did not
    /// answer in time.
    pub read_timeouts: u64,
    /// Coordinated writes answered `TooFewAcks` as soon as every replica up
    /// had answered, because fewer are up than the level counts.
    pub writes_short_of_copies: u64,
    /// Coordinated reads answered `TooFewAnswers` for the same reason.
    pub reads_short_of_copies: u64,
    /// Hints kept for replicas that missed a write.
    pub hints_queued: u64,
    /// Hints replayed and acknowledged.
    pub hints_replayed: u64,
    /// Anti-entropy rounds started.
    pub anti_entropy_rounds: u64,
    /// Sessions changed by a merge from a peer (anti-entropy or read repair).
    pub keys_repaired: u64,
    /// Stamps refused for being too far ahead of this node's clock.
    pub clock_drift_refused: u64,
    /// Writes this node refused to stamp, or that every other replica
    /// refused, because its own clock ran ahead of its peers'.
    pub writes_refused_clock_ahead: u64,
    /// Reads where a replica's fingerprint differed from this node's copy,
    /// so its state was fetched.
    pub digest_mismatches: u64,
    /// Writes refused because the node was over its memory bound.
    pub writes_refused_over_memory: u64,
    /// Sessions this node evicted to stay under its memory bound (Redis's
    /// `evicted_keys`): the evictions it coordinated.
    pub evicted_keys: u64,
    /// Eviction tombstones forgotten before it was known safe, because
    /// those waiting took more than an eighth of `maxmemory` (see
    /// `node/eviction.rs`).
    pub evicted_tombstones_forced: u64,
}
