//! What each replica keeps to take part in consensus, per instance: its
//! promises, accepted proposals and commits (see [`super`]), and what it
//! tells a replica that learns a partition.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Ballot, Proposal};
use crate::clock::Stamp;
use crate::partition::PartitionId;

/// What one replica keeps of one key's consensus.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptorState {
    /// The newest ballot it promised.
    pub promised: Ballot,
    /// The newest proposal it accepted, until one at least as new is committed.
    pub accepted: Option<Proposal>,
    /// The ballot of the newest proposal it saw committed.
    pub committed: Ballot,
    /// That proposal's write stamp: a coordinator whose own proposal was
    /// pre-empted learns from it that another round finished it.
    pub committed_stamp: Stamp,
    /// The write stamps of the last [`RECENT_COMMITS`] proposals it saw
    /// committed, oldest first: a coordinator pre-empted after proposing,
    /// whose proposal another round finished before committing its own,
    /// learns from them that its write was chosen.
    pub recent: Vec<Stamp>,
}

/// How many committed write stamps an acceptor keeps per key.
pub const RECENT_COMMITS: usize = 8;

/// Adds `stamp` to `recent`, a sorted list of the newest
/// [`RECENT_COMMITS`] committed stamps, dropping the oldest past that.
pub fn remember(recent: &mut Vec<Stamp>, stamp: Stamp) {
    if let Err(at) = recent.binary_search(&stamp) {
        recent.insert(at, stamp);
        if recent.len() > RECENT_COMMITS {
            recent.remove(0);
        }
    }
}

/// Whether `recent`, a list [`remember`] kept, would still hold `stamp`
/// had it been added: it is not full, or holds an older stamp.
pub fn would_hold(recent: &[Stamp], stamp: Stamp) -> bool {
    recent.len() < RECENT_COMMITS || recent.first().is_some_and(|oldest| *oldest < stamp)
}

impl AcceptorState {
    /// Remembers that the proposal stamped `stamp` was committed.
    fn remember(&mut self, stamp: Stamp) {
        remember(&mut self.recent, stamp);
    }

    /// Drops the accepted proposal once one at least as new was committed:
    /// it is done with.
    fn forget_settled(&mut self) {
        if self
            .accepted
            .as_ref()
            .is_some_and(|a| a.ballot <= self.committed)
        {
            self.accepted = None;
        }
    }
}

/// A node's standing in one partition's consensus, as it answers a
/// replica learning the partition (`AcceptorStates`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptorStanding {
    /// The partition.
    pub partition: PartitionId,
    /// The view of its replica set the answer was given under
    /// ([`view_of`]).
    pub view: u64,
    /// Whether the node's consensus memory of the partition is whole: it
    /// acts, or last acted, as its acceptor since it started.
    pub ready: bool,
    /// The partition's replica sets before the present one, as it saw
    /// them, as indices into [`Standings::sets`]: a learner hears from
    /// enough of each set's members too.
    pub previous: Vec<u32>,
}

/// A node's standing in the consensus of the partitions a learner asked
/// about (`AcceptorStates`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standings {
    /// The replica sets the partitions had before, each once.
    pub sets: Vec<Vec<String>>,
    /// Members of those sets that the node no longer counts: they left on
    /// purpose, or were down so long that the membership forgot them. A
    /// learner does not wait for them.
    pub gone: Vec<String>,
    /// Each partition answered for.
    pub partitions: Vec<AcceptorStanding>,
}

/// A fingerprint of a view of a partition's replica set: the replicas'
/// names in rank order and the copies majorities count against. Consensus
/// messages carry it, and a replica that sees another set takes no part
/// (see docs/consistency.md, "Membership changes").
#[must_use]
pub fn view_of(replicas: &[String], copies: usize) -> u64 {
    // FNV-1a: the same on every node and release.
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
        }
    };
    eat(&(copies as u64).to_le_bytes());
    for name in replicas {
        eat(&(name.len() as u64).to_le_bytes());
        eat(name.as_bytes());
    }
    hash
}

/// A replica's answer to a prepare it promised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promise {
    /// The proposal it accepted and has not seen committed.
    pub accepted: Option<Proposal>,
    /// The ballot of the newest proposal it saw committed.
    pub committed: Ballot,
    /// That proposal's write stamp.
    pub committed_stamp: Stamp,
    /// The write stamps of the last proposals it saw committed.
    pub recent: Vec<Stamp>,
}

/// The consensus state of every key this replica took part in deciding.
#[derive(Debug, Default)]
pub struct Acceptors {
    keys: HashMap<Bytes, AcceptorState>,
    /// The instances' names' bytes, for [`Acceptors::memory`].
    key_bytes: usize,
}

impl Acceptors {
    /// Promises `ballot` for `key` if it is newer than every ballot promised
    /// before; otherwise `Err` with the newest promised.
    ///
    /// # Errors
    /// The ballot this replica promised, which `ballot` does not pass.
    pub fn prepare(&mut self, key: &[u8], ballot: Ballot) -> Result<Promise, Ballot> {
        let state = self.state(key);
        if ballot <= state.promised {
            return Err(state.promised);
        }
        state.promised = ballot;
        Ok(Promise {
            accepted: state.accepted.clone(),
            committed: state.committed,
            committed_stamp: state.committed_stamp,
            recent: state.recent.clone(),
        })
    }

    /// Accepts `proposal` for `key` if its ballot is at least the newest
    /// promised; otherwise `Err` with that.
    ///
    /// # Errors
    /// The ballot this replica promised, newer than the proposal's.
    pub fn accept(&mut self, key: &[u8], proposal: Proposal) -> Result<(), Ballot> {
        let state = self.state(key);
        if proposal.ballot < state.promised {
            return Err(state.promised);
        }
        state.promised = proposal.ballot;
        for stamp in &proposal.recent {
            state.remember(*stamp);
        }
        state.accepted = Some(proposal);
        Ok(())
    }

    /// Records that `proposal` was committed: an accepted proposal no
    /// newer is done with.
    pub fn commit(&mut self, key: &[u8], proposal: &Proposal) {
        let state = self.state(key);
        if proposal.ballot > state.committed {
            state.committed = proposal.ballot;
            state.committed_stamp = proposal.stamp;
        }
        // Only a chosen proposal is committed, whatever order commits
        // arrive in; those it knows of were committed before it.
        state.remember(proposal.stamp);
        for stamp in &proposal.recent {
            state.remember(*stamp);
        }
        state.forget_settled();
    }

    /// Takes in what another replica keeps of `key`: the newer promise,
    /// the newer accepted proposal, the newer commit. A replica that lost
    /// its memory learns this way what it may have promised or accepted.
    pub fn learn(&mut self, key: &[u8], other: AcceptorState) {
        let state = self.state(key);
        state.promised = state.promised.max(other.promised);
        if other.committed > state.committed {
            state.committed = other.committed;
            state.committed_stamp = other.committed_stamp;
        }
        for stamp in other.recent {
            state.remember(stamp);
        }
        let newer = match (&state.accepted, &other.accepted) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(mine), Some(theirs)) => theirs.ballot > mine.ballot,
        };
        if newer {
            state.accepted = other.accepted;
        }
        state.forget_settled();
    }

    /// Every key's state, for the keys `wanted` picks.
    pub fn states(&self, mut wanted: impl FnMut(&[u8]) -> bool) -> Vec<(Bytes, AcceptorState)> {
        self.keys
            .iter()
            .filter(|(key, _)| wanted(key))
            .map(|(key, state)| (key.clone(), state.clone()))
            .collect()
    }

    /// What this replica keeps of `key`, if anything.
    pub fn get(&self, key: &[u8]) -> Option<&AcceptorState> {
        self.keys.get(key)
    }

    /// How many keys it keeps state for.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it keeps state for no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// What the kept state takes, bytes, roughly: each instance's name and
    /// state, its recent commits, and the map's slot (accepted proposals,
    /// dropped once committed, are not counted).
    pub fn memory(&self) -> usize {
        let per_instance =
            size_of::<(Bytes, AcceptorState)>() + RECENT_COMMITS * size_of::<Stamp>() + 8;
        self.keys.len() * per_instance + self.key_bytes
    }

    fn state(&mut self, key: &[u8]) -> &mut AcceptorState {
        if !self.keys.contains_key(key) {
            self.key_bytes += key.len();
        }
        self.keys.entry(Bytes::copy_from_slice(key)).or_default()
    }
}
