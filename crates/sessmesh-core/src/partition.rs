//! Partitioning: which partition a key is in, and which members replicate it.
//!
//! - **Key to partition**: `xxh3_64(key) mod partition_count` (XXH3, 64-bit,
//!   seed 0, as specified by the xxHash project: stable across versions,
//!   platforms and languages, so a client can compute it too). The partition
//!   count is a power of two, so this is the hash's low bits. A key with a
//!   **hash tag** (as Redis Cluster finds one: the bytes between its first
//!   `{` and the first `}` after it, when there are any) takes those 16 low
//!   bits from `xxh3_64(tag)` instead, so `{user42}:cart` and
//!   `{user42}:prefs` share a partition (and its replicas); the other 48
//!   bits still come from the whole key.
//! - **Partition to replicas** (rendezvous, or highest-random-weight, hashing):
//!   every member scores `xxh3_64(member name, seed = partition)`, and the
//!   `replication_factor` highest scores form the replica set, highest first
//!   (ties, which need equal 64-bit hashes, go to the smaller name).
//!
//! Members are scored by their *name*, not their generation, so a restarted
//! node owns the partitions it owned before. Because a member's score for a
//! partition does not depend on the other members, a join changes only the
//! replica sets the new member enters, and a leave only those it was in.
//! With `P` partitions, the number a member replicates varies around its fair
//! share `P * rf / members` with a relative standard deviation of about
//! `sqrt((1 - rf/members) / (P * rf / members))`: about 11% for 256 partitions,
//! rf 3 and 10 members. Raise the partition count for a tighter spread.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A partition's number, in `0..partition_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub u32);

/// The bits of a key's hash that place it: as many as the most partitions
/// a cluster may have ([`crate::Config::MAX_PARTITIONS`]).
const PLACEMENT_MASK: u64 = crate::Config::MAX_PARTITIONS as u64 - 1;

/// The stable 64-bit hash of a key that places it (see the [module docs](self)).
pub fn key_hash(key: &[u8]) -> u64 {
    let whole = xxh3_64(key);
    match hash_tag(key) {
        Some(tag) => (whole & !PLACEMENT_MASK) | (xxh3_64(tag) & PLACEMENT_MASK),
        None => whole,
    }
}

/// A key's hash tag, as Redis Cluster finds it: the bytes between the first
/// `{` and the first `}` after it, when there are any.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// The partition of a key with hash `key_hash`, for a power-of-two `partition_count`.
#[expect(
    clippy::cast_possible_truncation,
    reason = "masked below partition_count, a u32"
)]
pub fn partition_of(key_hash: u64, partition_count: u32) -> PartitionId {
    debug_assert!(partition_count.is_power_of_two());
    PartitionId((key_hash & u64::from(partition_count - 1)) as u32)
}

/// A member's rendezvous score for a partition: the highest scores replicate it.
pub fn rendezvous_score(partition: PartitionId, member_name: &[u8]) -> u64 {
    xxh3_64_with_seed(member_name, u64::from(partition.0))
}

/// The replica set of every partition for the current members.
///
/// `M` is how the caller names a member (a node name, or a richer member type
/// whose bytes are its name); it is cloned into the table.
#[derive(Clone, Debug)]
pub struct Partitioner<M> {
    partition_count: u32,
    replication_factor: usize,
    members: Vec<M>,
    /// `partition_count` rows of `min(rf, members)` replicas, highest score first.
    replicas: Vec<M>,
    /// The replicas' scores, row for row.
    scores: Vec<u64>,
}

impl<M: AsRef<[u8]> + Ord + Clone> Partitioner<M> {
    /// A partitioner with no members. `partition_count` must be a power of two
    /// and `replication_factor` at least one ([`crate::Config::validate`] checks both).
    pub fn new(partition_count: u32, replication_factor: usize) -> Self {
        assert!(
            partition_count.is_power_of_two(),
            "partition count must be a power of two"
        );
        assert!(
            replication_factor > 0,
            "replication factor must be at least 1"
        );
        Partitioner {
            partition_count,
            replication_factor,
            members: Vec::new(),
            replicas: Vec::new(),
            scores: Vec::new(),
        }
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }

    /// The current members, sorted.
    pub fn members(&self) -> &[M] {
        &self.members
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        partition_of(key_hash(key), self.partition_count)
    }

    /// Replaces the member list and returns the partitions whose replica set
    /// changed (membership or order), in partition order.
    ///
    /// A few members joining or leaving cost little: a newcomer is scored
    /// once per partition and takes a place only where it outranks the
    /// current last replica, and only rows that lost a member are rebuilt.
    /// Larger changes recompute every row.
    pub fn set_members(&mut self, members: impl IntoIterator<Item = M>) -> Vec<PartitionId> {
        let mut members: Vec<M> = members.into_iter().collect();
        members.sort();
        members.dedup();
        if members == self.members {
            return Vec::new();
        }
        let added: Vec<M> = members
            .iter()
            .filter(|m| self.members.binary_search(m).is_err())
            .cloned()
            .collect();
        let removed: Vec<M> = self
            .members
            .iter()
            .filter(|m| members.binary_search(m).is_err())
            .cloned()
            .collect();
        let old_width = self.width();
        let old_members = std::mem::replace(&mut self.members, members);
        let width = self.width();
        if width != old_width
            || old_members.is_empty()
            || added.len() + removed.len() > self.members.len() / 4
        {
            return self.recompute_all(old_width);
        }
        let mut changed = Vec::new();
        let mut row: Vec<(u64, M)> = Vec::with_capacity(width + added.len());
        for p in 0..self.partition_count {
            let partition = PartitionId(p);
            let range = p as usize * width..(p as usize + 1) * width;
            row.clear();
            row.extend(
                self.scores[range.clone()]
                    .iter()
                    .copied()
                    .zip(self.replicas[range.clone()].iter().cloned()),
            );
            let before = row.len();
            row.retain(|(_, m)| removed.binary_search(m).is_err());
            if row.len() < before {
                // A replica left: the row's next member could be anyone.
                row.clear();
                row.extend(
                    self.members
                        .iter()
                        .map(|m| (rendezvous_score(partition, m.as_ref()), m.clone())),
                );
            } else {
                row.extend(
                    added
                        .iter()
                        .map(|m| (rendezvous_score(partition, m.as_ref()), m.clone())),
                );
            }
            row.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            row.truncate(width);
            if row
                .iter()
                .map(|(_, m)| m)
                .ne(self.replicas[range.clone()].iter())
            {
                changed.push(partition);
                for (i, (score, member)) in range.zip(row.drain(..)) {
                    self.scores[i] = score;
                    self.replicas[i] = member;
                }
            }
        }
        changed
    }

    /// Scores every member for every partition.
    fn recompute_all(&mut self, old_width: usize) -> Vec<PartitionId> {
        let old = std::mem::take(&mut self.replicas);
        let width = self.width();
        let mut scored: Vec<(u64, &M)> = Vec::with_capacity(self.members.len());
        let mut replicas = Vec::with_capacity(width * self.partition_count as usize);
        let mut scores = Vec::with_capacity(width * self.partition_count as usize);
        for p in 0..self.partition_count {
            scored.clear();
            scored.extend(
                self.members
                    .iter()
                    .map(|m| (rendezvous_score(PartitionId(p), m.as_ref()), m)),
            );
            // Highest score first; equal scores by name.
            scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            for (score, member) in scored.iter().take(width) {
                scores.push(*score);
                replicas.push((*member).clone());
            }
        }
        self.replicas = replicas;
        self.scores = scores;
        (0..self.partition_count)
            .map(PartitionId)
            .filter(|&p| {
                let i = p.0 as usize;
                old.get(i * old_width..(i + 1) * old_width).unwrap_or(&[]) != self.replicas_for(p)
            })
            .collect()
    }

    /// The replicas of `partition`, highest score first: up to
    /// `replication_factor` members, fewer while the cluster is smaller.
    pub fn replicas_for(&self, partition: PartitionId) -> &[M] {
        let width = self.width();
        let i = partition.0 as usize;
        self.replicas.get(i * width..(i + 1) * width).unwrap_or(&[])
    }

    /// The partitions `member` replicates.
    pub fn partitions_of<'a>(&'a self, member: &'a M) -> impl Iterator<Item = PartitionId> + 'a {
        (0..self.partition_count)
            .map(PartitionId)
            .filter(move |&p| self.replicas_for(p).contains(member))
    }

    fn width(&self) -> usize {
        self.replication_factor.min(self.members.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn names(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
        range.map(|i| format!("node-{i}")).collect()
    }

    fn load(p: &Partitioner<String>) -> BTreeMap<String, usize> {
        p.members()
            .iter()
            .map(|m| (m.clone(), p.partitions_of(m).count()))
            .collect()
    }

    #[test]
    fn key_placement_is_the_documented_hash() {
        // XXH3-64 of the empty input with seed 0, from the xxHash specification's test vectors.
        assert_eq!(key_hash(b""), 0x2D06_8005_38D3_94C2);
        // No tag, or an empty one: the whole key.
        assert_eq!(key_hash(b"a{}b"), xxh3_64(b"a{}b"));
        assert_eq!(key_hash(b"a{b"), xxh3_64(b"a{b"));
        assert_eq!(partition_of(0x2D06_8005_38D3_94C2, 256), PartitionId(0xC2));
        let p: Partitioner<String> = Partitioner::new(256, 3);
        assert_eq!(p.partition_of(b""), PartitionId(0xC2));
    }

    #[test]
    fn ten_members_each_hold_their_fair_share_within_a_quarter() {
        let mut p = Partitioner::new(256, 3);
        p.set_members(names(1..=10));
        let fair = 256.0 * 3.0 / 10.0;
        for (member, held) in load(&p) {
            let share = held as f64 / fair;
            assert!(
                (0.75..=1.25).contains(&share),
                "{member} holds {held} replicas, {share:.2}x its fair share"
            );
        }
        assert_eq!(load(&p).values().sum::<usize>(), 256 * 3);
    }

    #[test]
    fn a_joining_member_changes_only_the_sets_it_enters() {
        let mut p = Partitioner::new(256, 3);
        p.set_members(names(1..=10));
        let before: Vec<Vec<String>> = (0..256)
            .map(|i| p.replicas_for(PartitionId(i)).to_vec())
            .collect();
        let changed = p.set_members(names(1..=11));
        let newcomer = "node-11".to_string();
        assert!(!changed.is_empty());
        for i in 0..256 {
            let after = p.replicas_for(PartitionId(i));
            let moved = after != before[i as usize].as_slice();
            assert_eq!(
                moved,
                after.contains(&newcomer),
                "partition {i}: {:?} -> {after:?}",
                before[i as usize]
            );
            assert_eq!(moved, changed.contains(&PartitionId(i)));
            if moved {
                // The newcomer took one place; the others keep their relative order.
                let kept: Vec<&String> = after.iter().filter(|m| **m != newcomer).collect();
                assert!(before[i as usize].iter().take(2).eq(kept));
            }
        }
    }

    #[test]
    fn a_leaving_member_changes_only_the_sets_it_was_in() {
        let mut p = Partitioner::new(256, 3);
        p.set_members(names(1..=10));
        let before: Vec<Vec<String>> = (0..256)
            .map(|i| p.replicas_for(PartitionId(i)).to_vec())
            .collect();
        let leaver = "node-4".to_string();
        let changed = p.set_members(names(1..=10).into_iter().filter(|m| *m != leaver));
        for i in 0..256 {
            let had = before[i as usize].contains(&leaver);
            assert_eq!(
                p.replicas_for(PartitionId(i)) != before[i as usize].as_slice(),
                had,
                "partition {i}"
            );
            assert_eq!(changed.contains(&PartitionId(i)), had);
            assert!(!p.replicas_for(PartitionId(i)).contains(&leaver));
        }
    }

    #[test]
    fn small_clusters_replicate_on_every_member() {
        let mut p = Partitioner::new(16, 3);
        assert!(p.replicas_for(PartitionId(0)).is_empty());
        p.set_members(names(1..=2));
        for i in 0..16 {
            assert_eq!(p.replicas_for(PartitionId(i)).len(), 2);
        }
        let changed = p.set_members(names(1..=3));
        assert_eq!(changed.len(), 16, "every set grows from two to three");
    }

    proptest::proptest! {
        /// Incremental updates give exactly the table a fresh recompute gives,
        /// and report exactly the rows that changed.
        #[test]
        fn incremental_updates_match_a_full_recompute(
            sets in proptest::collection::vec(proptest::collection::btree_set(0u8..24, 0..20), 1..12),
        ) {
            let mut p: Partitioner<String> = Partitioner::new(64, 3);
            for set in sets {
                let members: Vec<String> = set.iter().map(|i| format!("node-{i}")).collect();
                let before: Vec<Vec<String>> = (0..64).map(|i| p.replicas_for(PartitionId(i)).to_vec()).collect();
                let changed = p.set_members(members.clone());
                let mut fresh: Partitioner<String> = Partitioner::new(64, 3);
                fresh.set_members(members);
                for i in 0..64 {
                    proptest::prop_assert_eq!(p.replicas_for(PartitionId(i)), fresh.replicas_for(PartitionId(i)));
                    let moved = before[i as usize] != p.replicas_for(PartitionId(i));
                    proptest::prop_assert_eq!(moved, changed.contains(&PartitionId(i)), "partition {}", i);
                }
            }
        }
    }

    #[test]
    fn balance_tightens_with_more_partitions() {
        // 1,024 partitions: the spread is about 5.5%, so a quarter is over 4 standard deviations.
        for cluster in 0..50 {
            let members: Vec<String> = (0..10)
                .map(|i| format!("cluster-{cluster}-node-{i}"))
                .collect();
            let mut p = Partitioner::new(1024, 3);
            p.set_members(members);
            let fair = 1024.0 * 3.0 / 10.0;
            for (member, held) in load(&p) {
                let share = held as f64 / fair;
                assert!((0.75..=1.25).contains(&share), "{member}: {share:.2}x");
            }
        }
    }

    #[test]
    fn keys_of_one_hash_tag_share_a_partition() {
        assert_eq!(hash_tag(b"{user42}:cart"), Some(&b"user42"[..]));
        assert_eq!(hash_tag(b"session:{user42}"), Some(&b"user42"[..]));
        assert_eq!(hash_tag(b"foo{}{bar}"), None);
        assert_eq!(hash_tag(b"foo{{bar}}"), Some(&b"{bar"[..]));
        assert_eq!(hash_tag(b"plain"), None);
        let p = Partitioner::<String>::new(crate::Config::MAX_PARTITIONS, 3);
        let cart = p.partition_of(b"{user42}:cart");
        assert_eq!(p.partition_of(b"{user42}:prefs"), cart);
        assert_eq!(p.partition_of(b"\0db1\0{user42}:cart"), cart);
        // The same partition, but different keys to the store.
        assert_ne!(key_hash(b"{user42}:cart"), key_hash(b"{user42}:prefs"));
        let spread: std::collections::BTreeSet<_> = (0..64)
            .map(|i| p.partition_of(format!("{{user{i}}}:cart").as_bytes()))
            .collect();
        assert!(
            spread.len() > 50,
            "tags spread over partitions: {}",
            spread.len()
        );
    }
}
