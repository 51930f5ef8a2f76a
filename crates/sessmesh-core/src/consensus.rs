//! Consensus per key: what a linearizable operation on one key is, and what
//! each replica keeps to take part in deciding it.
//!
//! Plain writes merge (last writer wins per field) and need no agreement.
//! Operations that must be atomic (create if absent, increment, take a
//! lock) run instead as one instance of single-decree Paxos among the key's
//! replicas, as Cassandra's lightweight transactions do, with the read
//! folded into the prepare:
//!
//! 1. **Prepare.** The coordinator picks a ballot newer than any it has
//!    seen and asks the replicas to promise it. A replica promises a ballot
//!    newer than every ballot it promised before, and answers with the
//!    proposal it last accepted (if not yet committed), the ballot of the
//!    last proposal it saw committed, and its state of the key.
//! 2. **Propose.** With promises from a majority, the coordinator first
//!    finishes a proposal some replica accepted and that may not have been
//!    committed (it proposes that same write again under its own ballot).
//!    Otherwise it merges the states the majority reported, decides the
//!    operation on that state ([`Cas::decide`]), and proposes the write it
//!    gives, stamped after every value the majority reported. A replica
//!    accepts a proposal whose ballot is at least the one it promised.
//! 3. **Commit.** Once a majority accepted it, the write is chosen: the
//!    coordinator answers its caller and sends the commit to every replica,
//!    which applies the write as an ordinary stamped write.
//!
//! Without contention or faults that is two round trips; the commit needs
//! no answer. The safety argument is in docs/consistency.md.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::Stamp;
use crate::partition::PartitionId;
use crate::session::{Expiry, Session, Write};

/// A Paxos ballot: a stamp from the coordinator's clock, so ballots are
/// unique per node and ordered across nodes.
pub type Ballot = Stamp;

/// A write proposed for a key under a ballot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The ballot it is proposed under.
    pub ballot: Ballot,
    /// The write, applied as an ordinary write once chosen.
    pub write: Write,
    /// The write's stamp, fixed when it was first proposed: a proposal
    /// finished by another coordinator keeps it.
    pub stamp: Stamp,
    /// The write stamps of the last [`RECENT_COMMITS`] proposals committed
    /// before it, as its coordinator's prepare majority knew them (and the
    /// ones the coordinator finished itself): the acceptors that accept or
    /// see it committed keep them too, so every majority that accepted a
    /// later commit knows of an earlier chosen proposal.
    pub recent: Vec<Stamp>,
}

/// What a consensus operation does with a key's current state.
#[derive(Clone, Debug, PartialEq)]
pub enum Cas {
    /// Only reads the current state: a linearizable read.
    Read,
    /// Writes `write` when `when` holds of the current state.
    Write {
        /// The condition on the current state.
        when: Condition,
        /// The write.
        write: Write,
    },
    /// Adds `by` to the integer in field `field` (an absent session or
    /// field counts as 0), keeping the session's other fields and expiry,
    /// when `when` holds (else it writes nothing).
    Increment {
        /// The field.
        field: Bytes,
        /// How much to add (negative to subtract).
        by: i64,
        /// The condition on the current state (`Always` for none).
        when: Condition,
    },
    /// Adds `by` to the number in field `field` (absent counts as 0), when
    /// `when` holds.
    IncrementFloat {
        /// The field.
        field: Bytes,
        /// How much to add.
        by: f64,
        /// The condition on the current state (`Always` for none).
        when: Condition,
    },
    /// Takes the lock the key stands for if nobody holds it (or the
    /// holder's lease ran out): `holder` holds it until `ttl_ms` from the
    /// coordinator's clock, under a fencing token one above the last one
    /// the key gave (see [`Lease`]).
    Lock {
        /// Who takes it (unique per attempt).
        holder: Bytes,
        /// How long the lease lasts, ms.
        ttl_ms: u64,
    },
    /// Extends the lease `token` of `holder` by `ttl_ms` from now, if it is
    /// still theirs and has not run out.
    Renew {
        /// The holder; `None` to go by the token alone (tokens are unique
        /// per key).
        holder: Option<Bytes>,
        /// The lease's token.
        token: u64,
        /// How long from now, ms.
        ttl_ms: u64,
    },
    /// Ends the lease `token` of `holder`, if it is still theirs and has
    /// not run out. The token stays: the next lease's is greater.
    Unlock {
        /// The holder; `None` to go by the token alone.
        holder: Option<Bytes>,
        /// The lease's token.
        token: u64,
    },
    /// The caller's own decision: its function of the key's state (the
    /// commands of a Redis layer: `APPEND`, `SETRANGE`, transactions,
    /// scripts). See [`Computation`].
    Compute(Computation),
}

/// What a [`Computation`] runs: the key's state (tombstones included) and
/// the coordinator's clock, ms, to the write it decides, if any.
pub type ComputeFn = dyn Fn(Option<&Session>, u64) -> Result<Option<Write>, CasError> + Send + Sync;

/// A decision made by the caller's code. It runs on the coordinator, on
/// the state a majority reported, once for each attempt that gets that far;
/// only the write it returns is proposed. So it must be a function of its
/// arguments alone: given the same state and clock, the same write.
#[derive(Clone)]
pub struct Computation(std::sync::Arc<ComputeFn>);

impl Computation {
    /// A computation running `f`.
    pub fn new(
        f: impl Fn(Option<&Session>, u64) -> Result<Option<Write>, CasError> + Send + Sync + 'static,
    ) -> Self {
        Computation(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for Computation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Computation(..)")
    }
}

impl PartialEq for Computation {
    /// The same function, not an equal one.
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The fields a lock keeps in its key's session.
pub mod lock_fields {
    /// Who holds the lock (absent when free).
    pub const HOLDER: &[u8] = b"holder";
    /// The fencing token of the last lease given.
    pub const TOKEN: &[u8] = b"token";
    /// When the current lease runs out, wall-clock ms.
    pub const UNTIL: &[u8] = b"until";
}

/// A lock held: what [`Cas::Lock`] gave, read from the write it decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The holder.
    pub holder: Bytes,
    /// The fencing token: greater than every token the key gave before,
    /// across unlocks, expiries and coordinators.
    pub token: u64,
    /// When the lease runs out, by the coordinator's clock, wall-clock ms.
    pub until_ms: u64,
}

impl Lease {
    /// The lease a lock operation's write gives, if it gave one.
    pub fn from_write(write: &Write) -> Option<Lease> {
        let Write::Put { fields, .. } = write else {
            return None;
        };
        let get = |name: &[u8]| {
            fields
                .iter()
                .find(|(n, _)| n.as_ref() == name)
                .map(|(_, v)| v)
        };
        let number =
            |name: &[u8]| get(name).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        Some(Lease {
            holder: get(lock_fields::HOLDER)?.clone(),
            token: number(lock_fields::TOKEN)?,
            until_ms: number(lock_fields::UNTIL)?,
        })
    }
}

/// A condition on a key's current state, as a reader at the coordinator's
/// time sees it (expired and deleted sessions are absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always holds.
    Always,
    /// The session is absent.
    Absent,
    /// The session is present.
    Present,
    /// Field `name` holds `value` (`None`: the field, or the session, is absent).
    Field {
        /// The field.
        name: Bytes,
        /// The value it must hold.
        value: Option<Bytes>,
    },
    /// The session is absent, or has no field but `name` (a Redis string
    /// is a session whose one field has the empty name).
    OnlyField(Bytes),
    /// No visible field's name begins with these bytes (a Redis set keeps
    /// its members under names that begin with a zero byte).
    NoFieldPrefixed(Bytes),
    /// Every one of these holds.
    All(Vec<Condition>),
}

/// Why an operation could not be decided on the current state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CasError {
    /// The field does not hold an integer.
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// The sum does not fit a 64-bit integer.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// The field does not hold a number, or the result is not finite.
    #[error("value is not a valid float")]
    NotAFloat,
    /// A [`Computation`] refused the state, saying why (for a Redis layer,
    /// the error reply itself: `WRONGTYPE ...`).
    #[error("{0}")]
    Refused(String),
}

/// How an operation came out on the state it was decided on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// Whether it writes (its condition held).
    pub applied: bool,
    /// The write it gives, if any.
    pub write: Option<Write>,
}

impl Condition {
    /// Whether the condition holds of `current` (visible state only).
    pub fn holds(&self, current: Option<&Session>, now_ms: u64) -> bool {
        let visible = current.filter(|s| s.is_visible(now_ms));
        match self {
            Condition::Always => true,
            Condition::Absent => visible.is_none(),
            Condition::Present => visible.is_some(),
            Condition::Field { name, value } => field(visible, name, now_ms) == value.as_ref(),
            Condition::OnlyField(name) => visible
                .and_then(|s| s.visible_fields(now_ms))
                .is_none_or(|mut fields| fields.all(|(n, _)| n == name)),
            Condition::NoFieldPrefixed(prefix) => visible
                .and_then(|s| s.visible_fields(now_ms))
                .is_none_or(|mut fields| fields.all(|(n, _)| !n.starts_with(prefix))),
            Condition::All(conditions) => conditions.iter().all(|c| c.holds(current, now_ms)),
        }
    }
}

/// The value of field `name` of a visible session.
fn field<'s>(session: Option<&'s Session>, name: &[u8], now_ms: u64) -> Option<&'s Bytes> {
    session?
        .visible_fields(now_ms)?
        .find(|(n, _)| n.as_ref() == name)
        .map(|(_, v)| v)
}

impl Cas {
    /// Decides the operation on `current` (the merged state a majority of
    /// the key's replicas reported), as of `now_ms`.
    ///
    /// # Errors
    /// [`CasError`] when the state does not suit the operation (a field to
    /// increment that holds no number).
    pub fn decide(&self, current: Option<&Session>, now_ms: u64) -> Result<Decided, CasError> {
        let visible = current.filter(|s| s.is_visible(now_ms));
        let write = match self {
            Cas::Read => None,
            Cas::Write { when, write } => when.holds(current, now_ms).then(|| write.clone()),
            Cas::Increment { when, .. } | Cas::IncrementFloat { when, .. }
                if !when.holds(current, now_ms) =>
            {
                None
            }
            Cas::Increment {
                field: name, by, ..
            } => {
                let old = match field(visible, name, now_ms) {
                    None => 0,
                    Some(v) => parse_int(v).ok_or(CasError::NotAnInteger)?,
                };
                let new = old.checked_add(*by).ok_or(CasError::Overflow)?;
                Some(Write::PutField {
                    name: name.clone(),
                    value: Bytes::from(new.to_string()),
                })
            }
            Cas::IncrementFloat {
                field: name, by, ..
            } => {
                let old = match field(visible, name, now_ms) {
                    None => 0.0,
                    Some(v) => parse_float(v).ok_or(CasError::NotAFloat)?,
                };
                let new = old + by;
                if !new.is_finite() {
                    return Err(CasError::NotAFloat);
                }
                Some(Write::PutField {
                    name: name.clone(),
                    value: Bytes::from(format_float(new)),
                })
            }
            Cas::Lock { holder, ttl_ms } => {
                let held = lock_state(visible, now_ms);
                if held.live {
                    None
                } else {
                    Some(lease_write(holder, held.token + 1, now_ms + ttl_ms))
                }
            }
            Cas::Renew {
                holder,
                token,
                ttl_ms,
            } => {
                let held = lock_state(visible, now_ms);
                let theirs = holder.as_ref().is_none_or(|h| held.holder == Some(h));
                match held.holder {
                    Some(current) if held.live && theirs && held.token == *token => {
                        Some(lease_write(current, *token, now_ms + ttl_ms))
                    }
                    _ => None,
                }
            }
            Cas::Unlock { holder, token } => {
                let held = lock_state(visible, now_ms);
                let theirs = holder.as_ref().is_none_or(|h| held.holder == Some(h));
                (held.live && theirs && held.token == *token).then(|| Write::Put {
                    fields: vec![(
                        Bytes::from_static(lock_fields::TOKEN),
                        Bytes::from(token.to_string()),
                    )],
                    expiry: Expiry::NEVER,
                })
            }
            Cas::Compute(computation) => (computation.0)(current, now_ms)?,
        };
        Ok(Decided {
            applied: write.is_some(),
            write,
        })
    }
}

/// A lock's state as its session holds it.
struct LockState<'s> {
    holder: Option<&'s Bytes>,
    token: u64,
    /// Whether a lease is held and has not run out.
    live: bool,
}

fn lock_state(session: Option<&Session>, now_ms: u64) -> LockState<'_> {
    let number = |name: &[u8]| {
        field(session, name, now_ms)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let holder = field(session, lock_fields::HOLDER, now_ms);
    LockState {
        holder,
        token: number(lock_fields::TOKEN),
        live: holder.is_some() && number(lock_fields::UNTIL) > now_ms,
    }
}

/// The whole lock session for a lease (the session never expires, so its
/// token outlives every lease).
fn lease_write(holder: &Bytes, token: u64, until_ms: u64) -> Write {
    Write::Put {
        fields: vec![
            (Bytes::from_static(lock_fields::HOLDER), holder.clone()),
            (
                Bytes::from_static(lock_fields::TOKEN),
                Bytes::from(token.to_string()),
            ),
            (
                Bytes::from_static(lock_fields::UNTIL),
                Bytes::from(until_ms.to_string()),
            ),
        ],
        expiry: Expiry::NEVER,
    }
}

/// A Redis-style integer: optional minus sign, digits, no spaces or plus
/// sign, no leading zeros but "0", fitting an `i64`.
fn parse_int(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || s == "-0"
    {
        return None;
    }
    s.parse().ok()
}

fn parse_float(v: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(v).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A float as Redis prints an `INCRBYFLOAT` result: plain decimal, no
/// exponent, no trailing zeros.
pub fn format_float(f: f64) -> String {
    let s = format!("{f:.17}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    // Shortest form that reads back the same, when that is shorter.
    let short = f.to_string();
    if !short.contains('e') && short.len() <= s.len() {
        short
    } else {
        s.to_owned()
    }
}

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

    fn state(&mut self, key: &[u8]) -> &mut AcceptorState {
        self.keys.entry(Bytes::copy_from_slice(key)).or_default()
    }
}
