//! Repair in the background: anti-entropy rounds (digest roots, buckets,
//! keys, entries) metered against the repair budget, handoffs of
//! partitions this node no longer replicates, hint replays, sweeping.

use super::*;

impl Node {
    /// Partitions this node holds data for but no longer replicates, and
    /// that have a replica to take them: what a leaving node still has to
    /// hand off. (When every member leaves at once, nobody can take them.)
    pub fn partitions_to_hand_off(&self) -> usize {
        let me = &self.membership.me().name;
        (0..self.store.partition_count())
            .map(PartitionId)
            .filter(|&p| {
                let replicas = self.partitioner.replicas_for(p);
                !replicas.is_empty() && !replicas.contains(me) && self.store.partition_len(p) > 0
            })
            .count()
    }

    /// Hands each partition we hold data for but do not replicate to its
    /// current replicas, in acknowledged batches.
    pub(super) fn start_handoffs(&mut self) {
        let me = self.membership.me().name.clone();
        let orphans: Vec<PartitionId> = (0..self.store.partition_count())
            .map(PartitionId)
            .filter(|p| !self.handoffs.contains_key(p))
            .filter(|&p| {
                !self.partitioner.replicas_for(p).contains(&me) && self.store.partition_len(p) > 0
            })
            .collect();
        for partition in orphans {
            let replicas: Vec<(String, SocketAddr)> = self
                .partitioner
                .replicas_for(partition)
                .iter()
                .filter_map(|r| self.addrs.get(r).map(|a| (r.clone(), *a)))
                .collect();
            if replicas.is_empty() {
                continue;
            }
            let entries: Vec<Entry> = self.store.entries(partition);
            let mut outstanding = HashMap::new();
            for (replica, to) in replicas {
                for batch in entries.chunks(self.config.anti_entropy_max_entries) {
                    let request = self.in_flight.next_id();
                    let message = Message::Handoff {
                        request,
                        partition,
                        entries: batch.to_vec(),
                    };
                    self.effects.push(Effect::Send { to, message });
                    self.handoff_batches
                        .insert(request, (partition, replica.clone()));
                    self.schedule_deadline(request);
                    *outstanding.entry(replica.clone()).or_insert(0) += 1;
                }
            }
            self.handoffs.insert(partition, outstanding);
        }
    }

    /// Drops a handed-off partition once every one of its current replicas
    /// acknowledged every batch, if we still do not replicate it.
    pub(super) fn handoff_acknowledged(&mut self, partition: PartitionId, replica: &str) {
        let Some(outstanding) = self.handoffs.get_mut(&partition) else {
            return;
        };
        if let Some(count) = outstanding.get_mut(replica) {
            debug_assert!(*count > 0, "an acknowledgement of a batch not outstanding");
            *count = count.saturating_sub(1);
        }
        if outstanding.values().any(|&c| c > 0) {
            return;
        }
        let acknowledged: BTreeSet<String> = outstanding.keys().cloned().collect();
        self.handoffs.remove(&partition);
        let owners: BTreeSet<String> = self
            .partitioner
            .replicas_for(partition)
            .iter()
            .cloned()
            .collect();
        let me = &self.membership.me().name;
        if !owners.contains(me) && !owners.is_empty() && owners.is_subset(&acknowledged) {
            self.store.drop_partition(partition);
        }
    }

    /// How often hints are retried, at most.
    const HINT_REPLAY_MS: u64 = 1_000;

    pub(super) fn schedule_hint_replay(&mut self) {
        self.schedule(Self::HINT_REPLAY_MS, Timer::ReplayHints);
    }

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
        if now_ms >= self.repair_window_start_ms + 1_000 {
            self.repair_window_start_ms = now_ms;
            self.repair_window_bytes = 0;
        }
        if self.repair_window_bytes > 0
            && self.repair_window_bytes + bytes > self.config.anti_entropy_bytes_per_sec
        {
            self.repair_throttled = true;
            return;
        }
        self.repair_window_bytes += bytes;
        self.effects.push(Effect::Send {
            to,
            message: Message::Merge { entries },
        });
    }

    /// Sweeps the next few partitions, so the whole store is swept every
    /// `partition_count / PARTITIONS_PER_SWEEP` sweep periods.
    pub(super) fn sweep(&mut self, now_ms: u64) {
        const PARTITIONS_PER_SWEEP: u32 = 4;
        for _ in 0..PARTITIONS_PER_SWEEP.min(self.store.partition_count()) {
            self.store.sweep(PartitionId(self.sweep_cursor), now_ms);
            self.sweep_cursor = (self.sweep_cursor + 1) % self.store.partition_count();
        }
    }

    /// Sends every replica that is up the writes it missed, as writes to
    /// acknowledge: a hint goes only once its replica has it.
    pub(super) fn replay_hints(&mut self) {
        let addrs = &self.addrs;
        let hints = self.hints.take_where(|h| addrs.contains_key(&h.replica));
        for hint in hints {
            let Some(&to) = self.addrs.get(&hint.replica) else {
                continue;
            };
            let id = self.in_flight.next_id();
            let message = Message::Write {
                request: id,
                key: hint.key.clone(),
                write: hint.write.clone(),
                stamp: hint.stamp,
            };
            self.effects.push(Effect::Send { to, message });
            self.schedule_deadline(id);
            self.in_flight.replays.insert(id, hint);
        }
    }
}
