//! Placement: who replicates what. Membership changes recompute each
//! partition's replica set (members up and not leaving, by rendezvous
//! hashing), the addresses requests use, and the copies levels count.

use super::*;

impl Node {
    pub(super) fn refresh_addresses(&mut self) {
        let me = self.membership.me();
        self.addrs = newest_addresses(self.membership.members().chain(std::iter::once(me)));
        self.names = self
            .addrs
            .iter()
            .map(|(name, addr)| (*addr, name.clone()))
            .collect();
    }

    /// Recomputes the replica sets from the members that are up and not
    /// leaving, and the copies levels count against from every member.
    pub(super) fn rebalance(&mut self) {
        if self.addrs.is_empty() {
            self.refresh_addresses();
        }
        let me = self.membership.me().clone();
        let mut owners: BTreeSet<String> = self
            .membership
            .members()
            .filter(|m| self.membership.state_of(&m.name) != Some(MemberState::Leaving))
            .map(|m| m.name.clone())
            .collect();
        if self.membership.state() != MemberState::Leaving {
            owners.insert(me.name.clone());
        }
        let changed = self.partitioner.set_members(owners);
        self.counted = self.membership.counted_names();
        let copies_before = self.copies;
        self.copies = self
            .membership
            .counted_members()
            .clamp(1, self.config.replication_factor);
        let before = std::mem::take(&mut self.replica_sets);
        for partition in (0..self.store.partition_count()).map(PartitionId) {
            if let Some(set) = before.get(partition.0 as usize) {
                self.replicas_moved(partition, set, copies_before, &me.name);
            }
            let replicas = self.partitioner.replicas_for(partition);
            debug_assert!(replicas.len() <= self.copies);
            let local = if replicas.contains(&me.name) {
                self.copies
            } else {
                0
            };
            self.store.set_replicated(partition, local);
            self.replica_sets.push(
                replicas
                    .iter()
                    .map(|name| Replica {
                        name: name.clone(),
                        addr: self.addrs.get(name).copied().filter(|_| *name != me.name),
                        local: *name == me.name,
                    })
                    .collect(),
            );
        }
        if !changed.is_empty() {
            self.eviction.placement_changed_ms = self.store.clock();
            self.effects
                .push(Effect::Event(NodeEvent::ReplicasChanged(changed)));
        }
    }

    /// Keeps this node's consensus standing in `partition` true to a
    /// change of its replica set from `before` (under `copies_before`):
    /// the set before is remembered, for this node and those it answers
    /// must hear from enough of its members before acting as acceptors,
    /// and a partition gained, or one still being learned, is learned anew
    /// under the new view (learning.rs).
    fn replicas_moved(
        &mut self,
        partition: PartitionId,
        before: &[Replica],
        copies_before: usize,
        me: &String,
    ) {
        let names: Vec<String> = before.iter().map(|r| r.name.clone()).collect();
        let now = self.partitioner.replicas_for(partition);
        if names == now && copies_before == self.copies {
            return;
        }
        let replica = now.contains(me);
        let was_replica = before.iter().any(|r| r.local);
        let standing = &mut self.learning[partition.0 as usize];
        // A set smaller than a majority could decide nothing: nobody needs
        // to hear from it.
        if names.len() >= Level::Quorum.required(copies_before) {
            standing.remember(names);
        }
        // A node that became an acceptor while it saw fewer members than
        // the replication factor (a cluster forming, or a fragment of one
        // that had not met the rest) counted majorities of fewer copies:
        // as the cluster it sees grows, it learns again.
        let grew = self.copies > copies_before;
        if replica && (!was_replica || standing.learning.is_some() || grew) {
            standing.learning = Some(Answers::default());
        }
    }
}

/// Each member's address by name. A member restarted at another address
/// (a new port) is up twice until the old incarnation is declared down:
/// the newest generation is the one that answers.
pub(super) fn newest_addresses<'a>(
    members: impl Iterator<Item = &'a Member>,
) -> BTreeMap<String, SocketAddr> {
    let mut newest: HashMap<&str, &Member> = HashMap::new();
    for m in members {
        let entry = newest.entry(&m.name).or_insert(m);
        if m.generation > entry.generation {
            *entry = m;
        }
    }
    newest
        .into_iter()
        .map(|(name, m)| (name.to_owned(), m.addr))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_up_twice_is_reached_at_its_newest_incarnation() {
        let at = |port: u16, generation: u64| Member {
            name: "node-3".into(),
            addr: SocketAddr::from(([10, 0, 0, 3], port)),
            client_addr: None,
            generation,
            partition_count: 256,
            replication_factor: 3,
        };
        let (old, new) = (at(7001, 4), at(7002, 5));
        for order in [[&old, &new], [&new, &old]] {
            let addrs = newest_addresses(order.into_iter());
            assert_eq!(addrs.get("node-3"), Some(&new.addr));
        }
    }
}
