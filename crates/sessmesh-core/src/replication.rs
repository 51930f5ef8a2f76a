//! Replication bookkeeping: consistency levels, requests in flight, hints.
//!
//! The [`crate::Node`] coordinates every client call it receives: it stamps
//! a write and sends it to the key's replicas, or asks them for their state of
//! a key, and answers once enough replicas answered. This module holds what
//! that takes: the [`Level`]s, the requests in flight, and the hints kept for
//! replicas that missed a write.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::clock::Stamp;
use crate::session::{Session, Write};

/// How many copies must answer before a call completes.
///
/// Levels count against the copies a key should have: the replication
/// factor, or every member the cluster has (up or declared down, not those
/// that left) when it has fewer. A key whose replicas that are up are fewer
/// than its level needs is written to those, and the caller hears how many
/// acknowledged: a cut-off node does not call one copy a quorum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Level {
    /// One copy: any replica that is up.
    One,
    /// A majority of the copies.
    #[default]
    Quorum,
    /// Every copy.
    All,
}

impl Level {
    /// The answers needed when a key has `copies` copies (at least one).
    pub fn required(self, copies: usize) -> usize {
        match self {
            Level::One => 1,
            Level::Quorum => copies / 2 + 1,
            Level::All => copies,
        }
        .clamp(1, copies.max(1))
    }
}

/// Identifies a client call, for matching its [`Outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// How a client call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The write reached at least the required replicas.
    Written {
        /// Replicas that acknowledged before the call completed.
        acks: usize,
        /// The write's stamp.
        stamp: Stamp,
        /// For a delete: whether the read before it saw a live session
        /// (what a Redis `DEL` counts). `None` for other writes.
        existed: Option<bool>,
    },
    /// Fewer copies than the level needs acknowledged: some replicas did
    /// not answer in time, or fewer replicas are up than the level counts.
    /// The write is not rolled back: the replicas that took it keep it, the
    /// others get hints, and repair spreads it later.
    TooFewAcks {
        /// Replicas that acknowledged.
        acks: usize,
        /// Copies the level needed.
        needed: usize,
    },
    /// The newest state the required replicas hold (tombstones included;
    /// judge visibility at the caller's time).
    Read(Option<Session>),
    /// The keys of a partition a replica stores (`Node::partition_keys`).
    Keys(Vec<Bytes>),
    /// Fewer copies than the level needs answered a read: some replicas
    /// did not answer in time, or fewer replicas are up than it counts.
    TooFewAnswers {
        /// Replicas that answered.
        answers: usize,
        /// Copies the level needed.
        needed: usize,
    },
    /// This node's clock runs further ahead of its peers than they accept:
    /// the write was not stamped, or (before the clock was measured) every
    /// replica that answered refused its stamp. It is stored nowhere.
    ClockAhead {
        /// How far ahead, ms.
        ahead_ms: u64,
        /// The bound the peers enforce, `max_clock_drift_ms`.
        max_drift_ms: u64,
    },
    /// A consensus operation ([`crate::Cas`]) was decided: linearizable
    /// with every other consensus operation on the key.
    Decided(Box<Decision>),
    /// A consensus operation on several keys of one hash tag
    /// ([`crate::GroupCas`]) was decided.
    DecidedGroup(Box<GroupDecision>),
    /// A consensus operation could not be decided; it may be retried.
    Undecided {
        /// Why: too few replicas answered, or other coordinators' rounds
        /// kept pre-empting this one.
        reason: String,
        /// Whether its write was proposed, so that it may still take
        /// effect (a later round would finish it); `false` when it
        /// certainly did not.
        maybe_applied: bool,
    },
    /// The call was refused before anything was sent, or (for a consensus
    /// operation) the key's state does not suit it.
    Refused(String),
    /// A write that would add to what the node holds, refused: the node
    /// uses more than its memory bound (`maxmemory`, under `noeviction`).
    OverMemory {
        /// What the node uses, bytes.
        used: usize,
        /// Its bound.
        max: usize,
    },
}

/// How a consensus operation was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether it wrote (its condition held).
    pub applied: bool,
    /// The key's state it was decided on (tombstones included; judge
    /// visibility at the caller's time).
    pub before: Option<Session>,
    /// What it wrote, with the write's stamp.
    pub written: Option<(Write, Stamp)>,
}

/// How a consensus operation on several keys of one hash tag was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDecision {
    /// Whether it wrote.
    pub applied: bool,
    /// Each key's state it was decided on, in the order the operation named
    /// the keys (tombstones included).
    pub before: Vec<Option<Session>>,
    /// What it wrote to each key it wrote to, all under one stamp.
    pub written: Vec<(Bytes, Write)>,
    /// The writes' stamp, if it wrote.
    pub stamp: Option<Stamp>,
}

/// One replica of a partition, as requests to it address it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Replica {
    pub(crate) name: String,
    /// Where to send to it; `None` for this node, or a member whose address
    /// is not known.
    pub(crate) addr: Option<SocketAddr>,
    /// Whether it is this node.
    pub(crate) local: bool,
}

/// A partition's replicas, highest score first, shared by every request to
/// the partition until membership changes. Requests track replicas by their
/// index in it (at most [`MAX_REPLICAS`]).
pub(crate) type ReplicaSet = Arc<[Replica]>;

/// The most replicas a partition can have: requests keep a bit per replica.
pub(crate) const MAX_REPLICAS: usize = crate::Config::MAX_REPLICATION_FACTOR;

/// The replicas of a set whose bit is on in `bits`.
pub(crate) fn replicas_in(bits: u64) -> impl Iterator<Item = usize> {
    (0..MAX_REPLICAS).filter(move |&i| bits & (1 << i) != 0)
}

/// A write a replica missed, kept to replay when it is back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// The replica that missed it.
    pub replica: String,
    /// The key.
    pub key: Bytes,
    /// The write.
    pub write: Write,
    /// Its stamp.
    pub stamp: Stamp,
}

impl Hint {
    fn size(&self) -> usize {
        self.key.len()
            + 64
            + match &self.write {
                Write::Put { fields, .. } => fields.iter().map(|(n, v)| n.len() + v.len()).sum(),
                Write::PutField { name, value } => name.len() + value.len(),
                Write::DeleteField { name } => name.len(),
                _ => 0,
            }
    }
}

/// Hints, oldest first, bounded in bytes: past the bound the oldest go, and
/// are counted, because anti-entropy repairs what a dropped hint would have.
#[derive(Debug)]
pub struct Hints {
    queue: VecDeque<Hint>,
    bytes: usize,
    max_bytes: usize,
    dropped: u64,
}

impl Hints {
    /// An empty store holding at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Hints {
            queue: VecDeque::new(),
            bytes: 0,
            max_bytes,
            dropped: 0,
        }
    }

    /// Keeps `hint`, dropping the oldest hints if over the bound.
    pub fn push(&mut self, hint: Hint) {
        self.bytes += hint.size();
        self.queue.push_back(hint);
        self.drop_over_bound();
    }

    /// Sets the bound, dropping the oldest hints if over it.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
        self.drop_over_bound();
    }

    fn drop_over_bound(&mut self) {
        while self.bytes > self.max_bytes {
            let Some(old) = self.queue.pop_front() else {
                break;
            };
            self.bytes -= old.size();
            self.dropped += 1;
        }
    }

    /// Takes every hint for `replica`.
    pub fn take_for(&mut self, replica: &str) -> Vec<Hint> {
        self.take_where(|h| h.replica == replica)
    }

    /// Takes every hint `wanted` picks.
    pub fn take_where(&mut self, wanted: impl Fn(&Hint) -> bool) -> Vec<Hint> {
        let (mine, rest): (VecDeque<Hint>, VecDeque<Hint>) =
            self.queue.drain(..).partition(|h| wanted(h));
        self.queue = rest;
        self.bytes = self.queue.iter().map(Hint::size).sum();
        mine.into()
    }

    /// The key of every hint kept.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        self.queue.iter().map(|h| &h.key)
    }

    /// The number of hints kept.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no hints wait.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// What the kept hints take, bytes, as the bound counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Hints dropped because the store was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_need_one_a_majority_or_all() {
        assert_eq!(
            [Level::One, Level::Quorum, Level::All].map(|l| l.required(3)),
            [1, 2, 3]
        );
        assert_eq!(
            [Level::One, Level::Quorum, Level::All].map(|l| l.required(1)),
            [1, 1, 1]
        );
        assert_eq!(Level::Quorum.required(4), 3);
        assert_eq!(
            Level::All.required(0),
            1,
            "a call with no replicas still needs an answer"
        );
    }

    #[test]
    fn hints_are_bounded_and_overflow_is_counted() {
        let hint = |replica: &str, i: u8| Hint {
            replica: replica.into(),
            key: Bytes::from(vec![i; 36]),
            write: Write::Touch,
            stamp: Stamp::ZERO,
        };
        let mut hints = Hints::new(1_000);
        for i in 0..20 {
            hints.push(hint(if i % 2 == 0 { "a" } else { "b" }, i));
        }
        assert_eq!(hints.len(), 10, "100 bytes each, 1,000 bytes in all");
        assert_eq!(hints.dropped(), 10);
        let for_a = hints.take_for("a");
        assert_eq!(for_a.len(), 5);
        assert!(for_a.iter().all(|h| h.replica == "a"));
        assert_eq!(hints.len(), 5);
    }
}
