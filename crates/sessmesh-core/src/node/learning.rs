//! How a replica that may have lost its consensus state, or that gained a
//! partition, learns it before it acts as an acceptor.
//!
//! Replicas keep what they promised and accepted in memory. A node that
//! starts (maybe after a crash, with an empty memory) or gains a partition
//! would otherwise answer prepares as if it had never promised or accepted
//! anything, and a majority it forms could miss a decision. So for each
//! partition it replicates it first asks for what the others keep of the
//! partition's keys, and acts as an acceptor there only once it heard from
//! enough of them:
//! - `copies - majority + 1` of the other replicas: any majority that
//!   decided something while it was away holds one of them (unless a
//!   majority lost its memory at once);
//! - for every replica set the partition had before the present one, as
//!   this node or an answer saw it (each node remembers the last
//!   [`HISTORY`] sets of every partition), enough of that set's members
//!   whose memory is whole that every majority of it holds one. Members declared down count (they may
//!   only be cut off, with their memory), until the membership forgets
//!   them; those that left on purpose, and those that answered that they
//!   lost their memory, do not. So a partition whose replicas changed by
//!   more than one member at once keeps what its old replicas decided, and
//!   a side of a network partition that declared the others down does not
//!   decide what they may have decided.
//!
//! Only a node that sees the same replica set for the partition answers
//! (the request carries the learner's view): it has then stopped taking
//! part in rounds of the old set, so nothing it accepted later escapes the
//! learner. Until it learned, its prepares and proposals go unanswered, and
//! coordinators count on the others.

use super::*;
use crate::consensus::{AcceptorStanding, AcceptorState, Standings, instance_of, view_of};
use crate::partition::hash_tag;

/// This node's part in one partition's consensus.
#[derive(Clone, Debug)]
pub(super) struct Standing {
    /// `None` once this node may act as the partition's acceptor; while it
    /// learns, the answers so far.
    pub(super) learning: Option<Answers>,
    /// The partition's replica sets before the present one, as this node
    /// saw them, oldest first (at most [`HISTORY`]).
    pub(super) previous: Vec<Vec<String>>,
}

impl Default for Standing {
    /// A node that starts knows nothing yet.
    fn default() -> Self {
        Standing {
            learning: Some(Answers::default()),
            previous: Vec::new(),
        }
    }
}

/// How many earlier replica sets a node remembers per partition.
pub(super) const HISTORY: usize = 8;

impl Standing {
    /// Remembers `set` as one the partition had before the present.
    pub(super) fn remember(&mut self, set: Vec<String>) {
        self.previous.retain(|s| *s != set);
        self.previous.push(set);
        if self.previous.len() > HISTORY {
            self.previous.remove(0);
        }
    }
}

/// The answers a learning node has heard, under its present view.
#[derive(Clone, Debug, Default)]
pub(super) struct Answers {
    /// Who answered, and whether its memory of the partition was whole.
    from: BTreeMap<String, bool>,
    /// The replica sets they said the partition had before.
    previous: BTreeSet<Vec<String>>,
    /// Members of those sets that they said are gone: left on purpose, or
    /// down so long that the membership forgot them.
    gone: BTreeSet<String>,
}

impl Answers {
    /// Whether these answers cover every majority that may have decided
    /// something this node does not know: see the module's doc.
    fn enough(
        &self,
        own: &[Vec<String>],
        replicas: &[String],
        copies: usize,
        me: &str,
        counted: &BTreeSet<String>,
    ) -> bool {
        let needed = copies - Level::Quorum.required(copies) + 1;
        let answered = replicas
            .iter()
            .filter(|r| *r != me && self.from.contains_key(*r))
            .count();
        if answered < needed {
            return false;
        }
        self.previous.iter().chain(own).all(|set| {
            let quorum = Level::Quorum.required(set.len());
            // Gone by an answer's word, or by this node's for a set it saw.
            let seen_here = own.contains(set);
            let gone = |m: &String| self.gone.contains(m) || (seen_here && !counted.contains(m));
            // Who may still answer with a whole memory.
            let could = set
                .iter()
                .filter(|m| *m != me && !gone(m) && self.from.get(*m) != Some(&false))
                .count();
            let whole = set
                .iter()
                .filter(|m| self.from.get(*m) == Some(&true))
                .count();
            whole >= (set.len() + 1 - quorum).min(could)
        })
    }
}

impl Node {
    /// Whether this node acts as an acceptor for `key`.
    pub(super) fn acceptor_ready(&self, key: &[u8]) -> bool {
        let partition = self.store.partition_of(key);
        self.learning
            .get(partition.0 as usize)
            .is_some_and(|s| s.learning.is_none())
    }

    /// This node's view of `partition`'s replica set ([`view_of`]).
    pub(super) fn view_for(&self, partition: PartitionId) -> u64 {
        view_of(self.partitioner.replicas_for(partition), self.copies)
    }

    /// Asks for the consensus state of each partition still being learned
    /// (one message per node asked), and marks learned the partitions whose
    /// answers now suffice (or that have no other copy).
    pub(super) fn ask_to_learn(&mut self) {
        let me = self.membership.me().name.clone();
        let alone = self.copies <= 1;
        let mut asks: BTreeMap<String, Vec<(PartitionId, u64)>> = BTreeMap::new();
        for (p, standing) in self.learning.iter_mut().enumerate() {
            let Some(answers) = &standing.learning else {
                continue;
            };
            let partition = PartitionId(u32::try_from(p).unwrap_or(u32::MAX));
            let replicas = self.partitioner.replicas_for(partition);
            if !replicas.contains(&me) {
                continue;
            }
            if alone
                || answers.enough(
                    &standing.previous,
                    replicas,
                    self.copies,
                    &me,
                    &self.counted,
                )
            {
                standing.learning = None;
                continue;
            }
            let view = view_of(replicas, self.copies);
            let targets: BTreeSet<&String> = replicas
                .iter()
                .chain(answers.previous.iter().flatten())
                .chain(standing.previous.iter().flatten())
                .filter(|t| **t != me && !answers.from.contains_key(*t))
                .collect();
            for target in targets {
                asks.entry(target.clone())
                    .or_default()
                    .push((partition, view));
            }
        }
        for (target, partitions) in asks {
            if let Some(&to) = self.addrs.get(&target) {
                self.effects.push(Effect::Send {
                    to,
                    message: Message::SyncAcceptors { partitions },
                });
            }
        }
    }

    /// Answers a node learning these partitions' consensus state, for
    /// those whose replica set this node sees alike.
    pub(super) fn serve_sync(&mut self, from: SocketAddr, partitions: &[(PartitionId, u64)]) {
        let count = self.store.partition_count();
        // Each earlier set once, by index: partitions share most of them.
        let mut sets: BTreeMap<&Vec<String>, u32> = BTreeMap::new();
        let mut standings = Vec::new();
        for &(partition, view) in partitions {
            if partition.0 >= count || self.view_for(partition) != view {
                continue;
            }
            let standing = &self.learning[partition.0 as usize];
            let previous = standing
                .previous
                .iter()
                .map(|set| {
                    let next = u32::try_from(sets.len()).unwrap_or(u32::MAX);
                    *sets.entry(set).or_insert(next)
                })
                .collect();
            standings.push(AcceptorStanding {
                partition,
                view,
                ready: standing.learning.is_none(),
                previous,
            });
        }
        if standings.is_empty() {
            return;
        }
        let mut table = vec![Vec::new(); sets.len()];
        for (set, i) in sets {
            table[i as usize] = set.clone();
        }
        let gone: BTreeSet<&String> = table
            .iter()
            .flatten()
            .filter(|m| !self.counted.contains(*m))
            .collect();
        let gone = gone.into_iter().cloned().collect();
        let wanted: BTreeSet<PartitionId> = standings.iter().map(|s| s.partition).collect();
        let store = &self.store;
        let states = self
            .acceptors
            .states(|instance| wanted.contains(&store.partition_of(instance)));
        let sessions = self.sessions_of_instances(&states);
        self.effects.push(Effect::Send {
            to: from,
            message: Message::AcceptorStates {
                standings: Standings {
                    sets: table,
                    gone,
                    partitions: standings,
                },
                states,
                sessions,
            },
        });
    }

    /// This node's state of every key the consensus `instances` decide: a
    /// plain key's instance is the key; a hash tag's is every stored key of
    /// the tag, found by going through its partition.
    fn sessions_of_instances(&self, instances: &[(Bytes, AcceptorState)]) -> Vec<(Bytes, Session)> {
        let mut sessions = Vec::new();
        let mut tags: BTreeMap<PartitionId, BTreeSet<&[u8]>> = BTreeMap::new();
        for (instance, _) in instances {
            if hash_tag(instance).is_some() {
                let partition = self.store.partition_of(instance);
                tags.entry(partition).or_default().insert(instance);
            } else if let Some(session) = self.store.session(instance) {
                sessions.push((instance.clone(), session));
            }
        }
        for (partition, tags) in tags {
            self.store.with_entries(partition, |entries| {
                for entry in entries {
                    if tags.contains(&instance_of(entry.key()).as_ref()) {
                        let entry = entry.to_entry();
                        sessions.push((entry.key, entry.session));
                    }
                }
            });
        }
        sessions
    }

    /// Takes in another node's consensus state of some partitions.
    pub(super) fn learned(
        &mut self,
        from: SocketAddr,
        standings: Standings,
        states: Vec<(Bytes, AcceptorState)>,
        sessions: Vec<(Bytes, Session)>,
        now_ms: u64,
    ) {
        let Some(name) = self.names.get(&from).cloned() else {
            return;
        };
        let stamps = states
            .iter()
            .map(|(_, state)| Some(state.promised))
            .chain(sessions.iter().map(|(_, s)| Some(s.newest_stamp())));
        if !self.observe_newest(from, stamps, now_ms) {
            // Nothing from this answer counts.
            return;
        }
        for (key, session) in sessions {
            let _ = self.store.merge_remote(&key, session, now_ms);
        }
        for (instance, state) in states {
            self.acceptors.learn(&instance, state);
        }
        let me = self.membership.me().name.clone();
        let count = self.store.partition_count();
        let Standings {
            sets,
            gone,
            partitions,
        } = standings;
        for standing in partitions {
            // An answer given under another view than this node's present
            // one does not count, nor one naming sets it does not carry.
            if standing.partition.0 >= count
                || self.view_for(standing.partition) != standing.view
                || standing.previous.iter().any(|&i| i as usize >= sets.len())
            {
                continue;
            }
            let partition = standing.partition;
            let replicas = self.partitioner.replicas_for(partition);
            let Some(Standing {
                learning: Some(answers),
                previous: own,
            }) = self.learning.get_mut(partition.0 as usize)
            else {
                continue;
            };
            answers.from.insert(name.clone(), standing.ready);
            for i in standing.previous {
                let set = &sets[i as usize];
                if !answers.previous.contains(set) {
                    answers.previous.insert(set.clone());
                }
            }
            for member in &gone {
                if !answers.gone.contains(member) {
                    answers.gone.insert(member.clone());
                }
            }
            if answers.enough(own, replicas, self.copies, &me, &self.counted) {
                self.learning[partition.0 as usize].learning = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Answers from `from` (name, memory whole), with `previous` sets.
    fn answers(from: &[(&str, bool)], previous: &[&[&str]], gone: &[&str]) -> Answers {
        Answers {
            from: from.iter().map(|(n, r)| ((*n).to_owned(), *r)).collect(),
            previous: previous.iter().map(|s| names(s)).collect(),
            gone: gone.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn counted(list: &[&str]) -> BTreeSet<String> {
        names(list).into_iter().collect()
    }

    #[test]
    fn two_other_replicas_of_three_copies_suffice_without_history() {
        let replicas = names(&["a", "b", "c"]);
        let all = counted(&["a", "b", "c"]);
        let one = answers(&[("b", true)], &[], &[]);
        assert!(!one.enough(&[], &replicas, 3, "a", &all));
        // Memories lost or not: the present set's others are enough.
        let two = answers(&[("b", false), ("c", false)], &[], &[]);
        assert!(two.enough(&[], &replicas, 3, "a", &all));
    }

    #[test]
    fn an_earlier_set_needs_whole_memories_that_meet_each_of_its_majorities() {
        // The set moved from {x, y, z} to {x, d, e}: d learns.
        let replicas = names(&["x", "d", "e"]);
        let all = counted(&["x", "y", "z", "d", "e"]);
        let previous: &[&[&str]] = &[&["x", "y", "z"]];
        let present = answers(&[("x", true), ("e", false)], previous, &[]);
        assert!(!present.enough(&[], &replicas, 3, "d", &all));
        let with_y = answers(&[("x", true), ("e", false), ("y", true)], previous, &[]);
        assert!(with_y.enough(&[], &replicas, 3, "d", &all));
        // y restarted: its answer does not count, and z must answer.
        let y_lost = answers(&[("x", true), ("e", false), ("y", false)], previous, &[]);
        assert!(!y_lost.enough(&[], &replicas, 3, "d", &all));
        // The same set remembered by the learner itself counts as well.
        let own = vec![names(&["x", "y", "z"])];
        let alone = answers(&[("x", true), ("e", false)], &[], &[]);
        assert!(!alone.enough(&own, &replicas, 3, "d", &all));
    }

    #[test]
    fn members_that_are_gone_are_not_waited_for() {
        let replicas = names(&["x", "d", "e"]);
        let previous: &[&[&str]] = &[&["x", "y", "z"]];
        // y and z left (an answer says so): x alone covers what remains.
        let by_word = answers(&[("x", true), ("e", false)], previous, &["y", "z"]);
        let all = counted(&["x", "y", "z", "d", "e"]);
        assert!(by_word.enough(&[], &replicas, 3, "d", &all));
        // Declared down but not forgotten: they may only be cut off.
        let down = answers(&[("x", true), ("e", false)], previous, &[]);
        assert!(!down.enough(&[], &replicas, 3, "d", &all));
        // Forgotten by this node, for a set it saw itself.
        let own = vec![names(&["x", "y", "z"])];
        let forgotten = counted(&["x", "d", "e"]);
        let seen = answers(&[("x", true), ("e", false)], &[], &[]);
        assert!(seen.enough(&own, &replicas, 3, "d", &forgotten));
    }
}
