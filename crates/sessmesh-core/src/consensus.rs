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

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::Stamp;
use crate::session::{Expiry, Session, Write};

mod acceptors;
mod group;
mod locks;

pub use acceptors::{
    AcceptorStanding, AcceptorState, Acceptors, Promise, RECENT_COMMITS, Standings, remember,
    view_of, would_hold,
};
pub use group::{GroupCas, GroupComputation, GroupComputeFn, MAX_GROUP_KEYS};
pub use locks::{Lease, lock_fields};
use locks::{lease_write, lock_state};

/// A Paxos ballot: a stamp from the coordinator's clock, so ballots are
/// unique per node and ordered across nodes.
pub type Ballot = Stamp;

/// The writes proposed for the keys of one consensus instance under a
/// ballot (one key's write, or several keys' of one hash tag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The ballot it is proposed under.
    pub ballot: Ballot,
    /// Each key's write, applied as an ordinary write once chosen; every
    /// key is of the instance ([`instance_of`]).
    pub writes: Vec<(Bytes, Write)>,
    /// The writes' stamp, fixed when it was first proposed: a proposal
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

/// The consensus instance `key`'s operations run in: the key itself, or,
/// for a key with a hash tag, `{tag}`, shared by every key of the tag.
/// Operations on keys of one hash tag are therefore ordered with each other
/// (and may span several of its keys, [`GroupCas`]); they all lie in one
/// partition, so the instance has the keys' replicas.
#[must_use]
pub fn instance_of(key: &[u8]) -> Bytes {
    match crate::partition::hash_tag(key) {
        Some(tag) => {
            let mut instance = Vec::with_capacity(tag.len() + 2);
            instance.push(b'{');
            instance.extend_from_slice(tag);
            instance.push(b'}');
            Bytes::from(instance)
        }
        None => Bytes::copy_from_slice(key),
    }
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
pub(super) fn field<'s>(
    session: Option<&'s Session>,
    name: &[u8],
    now_ms: u64,
) -> Option<&'s Bytes> {
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
