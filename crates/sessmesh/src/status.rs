//! What a peer reports about itself and the cluster it sees.

use std::time::SystemTime;

use sessmesh_core::{Member, MemberState, MemoryReport, NodeStats};

/// A peer's view of itself and its cluster, from [`Node::status`](crate::Node::status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This peer's identity.
    pub me: Member,
    /// This peer's state as it announces it.
    pub state: MemberState,
    /// Every active member this peer knows, itself included, by name.
    pub members: Vec<MemberStatus>,
    /// The cluster's partition count.
    pub partition_count: u32,
    /// Partitions this peer replicates.
    pub partitions_owned: usize,
    /// Sessions this peer stores, tombstones included.
    pub sessions_stored: usize,
    /// What this peer holds in memory, as it counts it, with its bound.
    pub memory: MemoryReport,
    /// Writes waiting to be replayed to replicas that missed them.
    pub hints_pending: usize,
    /// Hints dropped because the hint budget was full (anti-entropy repairs
    /// what they carried).
    pub hints_dropped: u64,
    /// When the last anti-entropy round started; `None` before the first.
    pub last_anti_entropy: Option<SystemTime>,
    /// What replication did since the peer started.
    pub replication: NodeStats,
}

/// One member, as a [`Status`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its identity.
    pub member: Member,
    /// Its state as this peer last heard it.
    pub state: MemberState,
    /// Partitions it replicates, as this peer computes them.
    pub partitions: usize,
    /// Its wall clock less this peer's, in ms, as last measured (`None` for
    /// this peer itself, and before a measurement): negative when this
    /// peer's clock runs ahead of it.
    pub clock_offset_ms: Option<i64>,
}
