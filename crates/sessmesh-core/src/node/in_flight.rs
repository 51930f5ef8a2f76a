//! Requests in flight: one map from request id to what the request is, so
//! an acknowledgement, an answer or a deadline finds its request in one
//! look-up, and only a request of the kind it answers.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;

use bytes::Bytes;

use crate::clock::Stamp;
use crate::consensus::{Ballot, Cas, GroupCas, Promise, Proposal};
use crate::partition::PartitionId;
use crate::replication::{CallId, Hint, ReplicaSet};
use crate::session::{Session, Write};

use super::clears::PendingClear;
use super::listing::PendingList;

/// A request this node sent and waits on.
#[derive(Debug)]
pub(crate) enum Pending {
    /// A client write it coordinates ([`Message::Write`](crate::Message::Write),
    /// answered by `WriteAck` or `StampRefused`).
    Write(PendingWrite),
    /// A client read it coordinates (`Read`/`ReadDigest`, answered by
    /// `ReadReply`/`DigestReply`).
    Read(PendingRead),
    /// A hint being replayed to the replica that missed it (`HintReplay`,
    /// answered by `HintAck` or `StampRefused`).
    Replay(Hint),
    /// A batch of a partition handed off (`Handoff`, answered by `HandoffAck`).
    Handoff(HandoffBatch),
    /// A consensus round it coordinates (`Prepare`, answered by `Promise`
    /// or `Rejected`; `Propose`, answered by `Accepted` or `Rejected`).
    Round(Box<PendingRound>),
    /// A clear of a key range it coordinates (`Clear`, answered by
    /// `ClearAck`).
    Clear(PendingClear),
    /// A listing of a partition's keys (`ListKeys`, answered by `Keys`).
    List(PendingList),
}

/// A consensus operation being decided, in one of its attempts.
#[derive(Debug)]
pub(crate) struct PendingRound {
    pub(crate) call: CallId,
    /// The consensus instance ([`crate::consensus::instance_of`]).
    pub(crate) instance: Bytes,
    /// The keys the operation reads and may write, all of the instance.
    pub(crate) keys: Vec<Bytes>,
    pub(crate) op: RoundOp,
    pub(crate) replicas: ReplicaSet,
    /// Promises, then acceptances, needed: a majority of the key's copies.
    pub(crate) needed: usize,
    /// The view of the replica set this attempt runs under
    /// ([`crate::consensus::view_of`]); replicas that see another refuse.
    pub(crate) view: u64,
    /// Replicas that refused an attempt for seeing another replica set.
    pub(crate) moving: usize,
    /// This attempt's ballot.
    pub(crate) ballot: Ballot,
    pub(crate) phase: Phase,
    /// A bit per replica that has not answered this phase yet.
    pub(crate) waiting: u64,
    /// Each promise: the replica's index, the promise, and its state of
    /// each key.
    pub(crate) promises: Vec<(usize, Promise, Vec<Option<Session>>)>,
    /// Acceptances of this attempt's proposal.
    pub(crate) accepts: usize,
    /// When the operation started, wall-clock ms: retries stop a request
    /// timeout after it.
    pub(crate) started_ms: u64,
    /// Attempts so far.
    pub(crate) attempts: u32,
    /// The operation's own proposal, once one was made, with the state it
    /// was decided on and the newest commit seen then: a later attempt
    /// finds out whether it was chosen, or proposes it again while nothing
    /// else was committed since.
    pub(crate) mine: Option<Mine>,
    /// The write stamps of the proposals this operation finished for
    /// other rounds: its own proposals carry them (see
    /// [`Proposal::recent`]).
    pub(crate) finished: Vec<Stamp>,
}

/// An operation's own proposal, kept across attempts.
#[derive(Debug)]
pub(crate) struct Mine {
    pub(crate) proposal: Proposal,
    pub(crate) before: Vec<Option<Session>>,
    pub(crate) seen_commit: Ballot,
}

/// Where an attempt of a consensus round is.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a round is boxed in the requests in flight already"
)]
pub(crate) enum Phase {
    /// Waiting to start again after it was pre-empted.
    Backoff,
    /// Asking for promises.
    Prepare,
    /// Asking replicas to accept `proposal`.
    Propose {
        proposal: Proposal,
        /// Whether it finishes another round's proposal (then the
        /// operation starts again once it is committed) rather than
        /// proposing the operation's own write, decided on `before`.
        finishing: bool,
        before: Option<Vec<Option<Session>>>,
    },
    /// The operation's own proposal is chosen: waiting for a majority to
    /// apply it (`Committed`), so that a read at quorum right after the
    /// answer sees it. `accepts` counts the replicas that applied it.
    Commit {
        proposal: Proposal,
        before: Vec<Option<Session>>,
    },
}

/// What a consensus round decides: an operation on one key, or on several
/// keys of one hash tag.
#[derive(Debug)]
pub(crate) enum RoundOp {
    One(Cas),
    Group(GroupCas),
}

/// A write waiting for acknowledgements.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    pub(crate) call: CallId,
    pub(crate) key: Bytes,
    pub(crate) write: Write,
    pub(crate) stamp: Stamp,
    pub(crate) needed: usize,
    pub(crate) replicas: ReplicaSet,
    /// A bit per replica that has not acknowledged yet.
    pub(crate) waiting: u64,
    pub(crate) acks: usize,
    /// Whether the client has its answer (later acks still clear hints).
    pub(crate) answered: bool,
    /// For a delete, whether its read saw a live session.
    pub(crate) existed: Option<bool>,
    /// The index of this node among the replicas while its own copy waits
    /// for another replica to accept the stamp (this node's clock is not
    /// measured yet): a write every other replica refuses is stored nowhere.
    pub(crate) deferred: Option<usize>,
    /// How far ahead of the clock of a replica that refused the stamp it
    /// was, at most, ms; 0 while none refused.
    pub(crate) refused_ahead_ms: u64,
}

/// A read waiting for answers.
#[derive(Debug)]
pub(crate) struct PendingRead {
    pub(crate) call: CallId,
    pub(crate) key: Bytes,
    pub(crate) needed: usize,
    pub(crate) replicas: ReplicaSet,
    /// A bit per replica that has not answered yet.
    pub(crate) waiting: u64,
    /// Each answer, by the replica's index.
    pub(crate) answers: Vec<(usize, Option<Session>)>,
    /// For a delete's read, the level of the delete to coordinate once the
    /// read is done (or timed out) instead of answering: a delete reads
    /// first, so that its stamp comes after every stamp the read saw.
    pub(crate) then: Option<crate::Level>,
    /// Replicas not asked yet, asked if the others are slow.
    pub(crate) unasked: Vec<usize>,
    /// This node's copy and its fingerprint, when this node is a replica:
    /// the others are then asked for their fingerprints only, and a replica
    /// whose fingerprint matches answers with this copy. One that differs
    /// is asked for its state.
    pub(crate) local: Option<(Option<Session>, Option<u64>)>,
}

/// One batch of a handoff, sent to one replica.
#[derive(Debug)]
pub(crate) struct HandoffBatch {
    pub(crate) partition: PartitionId,
    pub(crate) replica: String,
}

/// A kind of [`Pending`] request, for looking up only requests of that kind.
pub(crate) trait Kind: Sized {
    fn is(pending: &Pending) -> bool;
    fn of(pending: &mut Pending) -> Option<&mut Self>;
    fn from(pending: Pending) -> Option<Self>;
}

macro_rules! kind {
    ($variant:ident, $type:ty) => {
        impl Kind for $type {
            fn is(pending: &Pending) -> bool {
                matches!(pending, Pending::$variant(_))
            }
            fn of(pending: &mut Pending) -> Option<&mut Self> {
                match pending {
                    Pending::$variant(inner) => Some(inner),
                    _ => None,
                }
            }
            fn from(pending: Pending) -> Option<Self> {
                match pending {
                    Pending::$variant(inner) => Some(inner),
                    _ => None,
                }
            }
        }
    };
}

kind!(Write, PendingWrite);
kind!(Read, PendingRead);
kind!(Replay, Hint);
kind!(Handoff, HandoffBatch);
kind!(Clear, PendingClear);
kind!(List, PendingList);

impl Kind for PendingRound {
    fn is(pending: &Pending) -> bool {
        matches!(pending, Pending::Round(_))
    }
    fn of(pending: &mut Pending) -> Option<&mut Self> {
        match pending {
            Pending::Round(inner) => Some(inner),
            _ => None,
        }
    }
    fn from(pending: Pending) -> Option<Self> {
        match pending {
            Pending::Round(inner) => Some(*inner),
            _ => None,
        }
    }
}

/// Requests in flight, by request id.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    next: u64,
    requests: HashMap<u64, Pending>,
}

impl InFlight {
    /// A request id not used before.
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    pub(crate) fn insert(&mut self, id: u64, pending: Pending) {
        let previous = self.requests.insert(id, pending);
        debug_assert!(previous.is_none(), "request id {id} used twice");
    }

    /// The request `id`, if it is in flight and of kind `K`.
    pub(crate) fn get_mut<K: Kind>(&mut self, id: u64) -> Option<&mut K> {
        self.requests.get_mut(&id).and_then(K::of)
    }

    /// Removes and returns the request `id`, if it is in flight and of
    /// kind `K`; a request of another kind stays.
    pub(crate) fn take<K: Kind>(&mut self, id: u64) -> Option<K> {
        match self.requests.entry(id) {
            MapEntry::Occupied(entry) if K::is(entry.get()) => K::from(entry.remove()),
            _ => None,
        }
    }

    /// Removes and returns the request `id`, whatever its kind.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Pending> {
        self.requests.remove(&id)
    }

    /// Keeps only the requests `keep` says to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Pending) -> bool) {
        self.requests.retain(|_, p| keep(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Pending {
        Pending::Handoff(HandoffBatch {
            partition: PartitionId(3),
            replica: "node-2".into(),
        })
    }

    #[test]
    fn an_answer_finds_only_a_request_of_its_kind() {
        let mut in_flight = InFlight::default();
        let id = in_flight.next_id();
        in_flight.insert(id, batch());
        // A write's acknowledgement, or a hint's, naming a handoff batch.
        assert!(in_flight.get_mut::<PendingWrite>(id).is_none());
        assert!(in_flight.take::<PendingWrite>(id).is_none());
        assert!(in_flight.take::<Hint>(id).is_none());
        // The batch is still there for its own acknowledgement.
        let taken = in_flight.take::<HandoffBatch>(id).map(|b| b.partition);
        assert_eq!(taken, Some(PartitionId(3)));
        assert!(in_flight.take::<HandoffBatch>(id).is_none());
    }

    #[test]
    fn request_ids_are_never_reused() {
        let mut in_flight = InFlight::default();
        let ids: Vec<u64> = (0..3).map(|_| in_flight.next_id()).collect();
        assert_eq!(ids, [1, 2, 3]);
    }
}
