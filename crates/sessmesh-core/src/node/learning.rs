//! How a replica that may have lost its consensus state learns it before it
//! acts as an acceptor.
//!
//! Replicas keep what they promised and accepted in memory. A node that
//! starts (maybe after a crash, with an empty memory) or gains a partition
//! would otherwise answer prepares as if it had never promised or accepted
//! anything, and a majority it forms with one other replica could miss a
//! decision. So for each partition it replicates it first asks the other
//! replicas for what they keep of the partition's keys, and acts as an
//! acceptor there only once `copies - majority + 1` of them answered: any
//! majority that decided something while it was away holds one of them
//! (unless a majority lost its memory at once). Until then its prepares and
//! proposals go unanswered, and coordinators count on the others.

use super::*;
use crate::consensus::AcceptorState;

impl Node {
    /// Whether this node acts as an acceptor for `key`.
    pub(super) fn acceptor_ready(&self, key: &[u8]) -> bool {
        let partition = self.store.partition_of(key);
        self.learning
            .get(partition.0 as usize)
            .is_some_and(Option::is_none)
    }

    /// How many other replicas must answer: every majority of the copies
    /// holds one of any `copies - majority + 1` others.
    fn answers_needed(&self) -> usize {
        self.copies - Level::Quorum.required(self.copies) + 1
    }

    /// Asks the other replicas of each partition still being learned for
    /// their consensus state (one message per replica), and marks learned
    /// the partitions that need no answer (this node is their only copy).
    pub(super) fn ask_to_learn(&mut self) {
        let me = self.membership.me().name.clone();
        let alone = self.copies <= 1;
        let mut asks: BTreeMap<String, Vec<PartitionId>> = BTreeMap::new();
        for (p, learning) in self.learning.iter_mut().enumerate() {
            let Some(answered) = learning else { continue };
            let partition = PartitionId(u32::try_from(p).unwrap_or(u32::MAX));
            let replicas = self.partitioner.replicas_for(partition);
            if !replicas.contains(&me) {
                continue;
            }
            if alone {
                *learning = None;
                continue;
            }
            for replica in replicas
                .iter()
                .filter(|r| **r != me && !answered.contains(*r))
            {
                asks.entry(replica.clone()).or_default().push(partition);
            }
        }
        for (replica, partitions) in asks {
            if let Some(&to) = self.addrs.get(&replica) {
                self.effects.push(Effect::Send {
                    to,
                    message: Message::SyncAcceptors { partitions },
                });
            }
        }
    }

    /// Answers a replica learning these partitions' consensus state.
    pub(super) fn serve_sync(&mut self, from: SocketAddr, partitions: Vec<PartitionId>) {
        let wanted: BTreeSet<PartitionId> = partitions.iter().copied().collect();
        let store = &self.store;
        let states = self
            .acceptors
            .states(|key| wanted.contains(&store.partition_of(key)))
            .into_iter()
            .map(|(key, state)| {
                let session = self.store.session(&key);
                (key, state, session)
            })
            .collect();
        self.effects.push(Effect::Send {
            to: from,
            message: Message::AcceptorStates { partitions, states },
        });
    }

    /// Takes in another replica's consensus state of some partitions.
    pub(super) fn learned(
        &mut self,
        from: SocketAddr,
        partitions: &[PartitionId],
        states: Vec<(Bytes, AcceptorState, Option<Session>)>,
        now_ms: u64,
    ) {
        let Some(name) = self.names.get(&from).cloned() else {
            return;
        };
        for (key, state, session) in states {
            let newest = [
                Some(state.promised),
                session.as_ref().map(Session::newest_stamp),
            ]
            .into_iter()
            .flatten()
            .max();
            if let Some(newest) = newest
                && let Err(e) = self.hlc.observe(newest, now_ms)
            {
                // Nothing from this answer counts.
                self.refuse_drift(from, &e);
                return;
            }
            if let Some(session) = session {
                let _ = self.store.merge_remote(&key, session, now_ms);
            }
            self.acceptors.learn(&key, state);
        }
        let needed = self.answers_needed();
        for &partition in partitions {
            let is_replica = self.partitioner.replicas_for(partition).contains(&name);
            if let Some(Some(answered)) = self.learning.get_mut(partition.0 as usize)
                && is_replica
            {
                answered.insert(name.clone());
                if answered.len() >= needed {
                    self.learning[partition.0 as usize] = None;
                }
            }
        }
    }
}
