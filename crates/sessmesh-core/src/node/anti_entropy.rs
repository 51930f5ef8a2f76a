//! Anti-entropy: rounds that compare the digests of the partitions this
//! node shares with each other replica (roots, then buckets, then keys) and
//! exchange the sessions that differ, metered against the repair budget.

use super::*;

/// The repair budget's metering and the rounds' timing.
#[derive(Debug, Default)]
pub(super) struct Metering {
    /// Start of the current metering window, ms.
    window_start_ms: u64,
    /// Repair bytes sent in it.
    window_bytes: u64,
    /// Whether an answer was skipped for the budget since the last round.
    pub(super) throttled: bool,
    /// When the last round started, wall-clock ms.
    pub(super) last_round_ms: Option<u64>,
}

impl Node {
    /// Partitions this node replicates.
    pub(super) fn my_partitions(&self) -> Vec<PartitionId> {
        let me = &self.membership.me().name;
        self.partitioner.partitions_of(me).collect()
    }

    /// Starts an anti-entropy round: to every other replica of our
    /// partitions, the digest roots of the partitions we share; and for each
    /// partition we hold data for but no longer replicate (after a membership
    /// change, or while leaving), a handoff to its replicas.
    pub(super) fn anti_entropy_round(&mut self) {
        self.stats.anti_entropy_rounds += 1;
        self.start_handoffs();
        let me = self.membership.me().name.clone();
        let mut shared: HashMap<String, Vec<(PartitionId, u64)>> = HashMap::new();
        for partition in self.my_partitions() {
            let root = self.store.digest_root(partition);
            for replica in self.partitioner.replicas_for(partition) {
                if *replica != me {
                    shared
                        .entry(replica.clone())
                        .or_default()
                        .push((partition, root));
                }
            }
        }
        let mut peers: Vec<(String, Vec<(PartitionId, u64)>)> = shared.into_iter().collect();
        peers.sort();
        for (replica, roots) in peers {
            if let Some(&to) = self.addrs.get(&replica) {
                self.effects.push(Effect::Send {
                    to,
                    message: Message::DigestRoots { roots },
                });
                self.send_clears(to);
            }
        }
    }

    /// Step 2: for each shared partition whose root differs, our buckets.
    pub(super) fn compare_roots(&mut self, from: SocketAddr, roots: &[(PartitionId, u64)]) {
        let mine: BTreeSet<PartitionId> = self.my_partitions().into_iter().collect();
        for &(partition, root) in roots {
            if mine.contains(&partition) && self.store.digest_root(partition) != root {
                let buckets = self.store.digest(partition).buckets().to_vec();
                self.effects.push(Effect::Send {
                    to: from,
                    message: Message::DigestBuckets { partition, buckets },
                });
            }
        }
    }

    /// Whether `partition` exists here (a peer may name any number).
    pub(super) fn known(&self, partition: PartitionId) -> bool {
        partition.0 < self.store.partition_count()
    }

    /// Step 3: for each bucket that differs, our key digests.
    pub(super) fn compare_buckets(
        &mut self,
        from: SocketAddr,
        partition: PartitionId,
        buckets: &[u64],
    ) {
        if !self.known(partition) {
            return;
        }
        for bucket in self.store.digest(partition).differing_buckets(buckets) {
            let keys = self.store.bucket_keys(partition, bucket);
            self.effects.push(Effect::Send {
                to: from,
                message: Message::DigestKeys {
                    partition,
                    bucket,
                    keys,
                },
            });
        }
    }

    /// Step 4: push our versions of the keys that differ, and ask for theirs.
    pub(super) fn compare_keys(
        &mut self,
        from: SocketAddr,
        partition: PartitionId,
        bucket: u8,
        keys: &[KeyDigest],
        now_ms: u64,
    ) {
        if !self.known(partition) {
            return;
        }
        let mut differing = differing_keys(&self.store.bucket_keys(partition, bucket), keys);
        differing.truncate(self.config.anti_entropy_max_entries);
        if differing.is_empty() {
            return;
        }
        self.send_entries(from, partition, &differing, now_ms);
        self.effects.push(Effect::Send {
            to: from,
            message: Message::FetchKeys {
                partition,
                key_hashes: differing,
            },
        });
    }

    /// Sends our sessions with these key hashes (at most the round's bound).
    ///
    /// Repair traffic is metered in one-second windows against
    /// `anti_entropy_bytes_per_sec`: an answer that would pass the window's
    /// budget is skipped (the first answer of a window always goes), and the
    /// next round comes a window later instead of a period later.
    pub(super) fn send_entries(
        &mut self,
        to: SocketAddr,
        partition: PartitionId,
        key_hashes: &[u64],
        now_ms: u64,
    ) {
        if !self.known(partition) {
            return;
        }
        let limit = key_hashes.len().min(self.config.anti_entropy_max_entries);
        let entries = self.store.entries_by_hash(partition, &key_hashes[..limit]);
        if entries.is_empty() {
            return;
        }
        let bytes: u64 = entries
            .iter()
            .map(|e| (e.key.len() + e.session.approx_bytes()) as u64)
            .sum();
        if now_ms >= self.metering.window_start_ms + 1_000 {
            self.metering.window_start_ms = now_ms;
            self.metering.window_bytes = 0;
        }
        if self.metering.window_bytes > 0
            && self.metering.window_bytes + bytes > self.config.anti_entropy_bytes_per_sec
        {
            self.metering.throttled = true;
            return;
        }
        self.metering.window_bytes += bytes;
        self.effects.push(Effect::Send {
            to,
            message: Message::Merge { entries },
        });
    }
}
