//! Handoff: the partitions this node holds data for but no longer
//! replicates (after a membership change, or while leaving) go to their
//! replicas in acknowledged batches, and are dropped here once every
//! replica has every batch.

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
                    let batch = HandoffBatch {
                        partition,
                        replica: replica.clone(),
                    };
                    self.in_flight.insert(request, Pending::Handoff(batch));
                    self.schedule_deadline(request);
                    *outstanding.entry(replica.clone()).or_insert(0) += 1;
                }
            }
            self.handoffs.insert(partition, outstanding);
        }
    }

    /// A batch is merged at its replica. Drops a handed-off partition once
    /// every one of its current replicas acknowledged every batch, if we
    /// still do not replicate it.
    pub(super) fn handoff_acknowledged(&mut self, request: u64) {
        let Some(HandoffBatch { partition, replica }) = self.in_flight.take(request) else {
            return;
        };
        let Some(outstanding) = self.handoffs.get_mut(&partition) else {
            return;
        };
        if let Some(count) = outstanding.get_mut(&replica) {
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

    /// A batch was not acknowledged in time: this attempt is abandoned, its
    /// other batches included (a late acknowledgement of one must not count
    /// for the next attempt's); the next anti-entropy round starts another.
    pub(super) fn handoff_expired(&mut self, batch: HandoffBatch) {
        let partition = batch.partition;
        self.handoffs.remove(&partition);
        self.in_flight
            .retain(|p| !matches!(p, Pending::Handoff(b) if b.partition == partition));
    }
}
