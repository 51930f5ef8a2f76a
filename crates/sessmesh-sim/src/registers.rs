//! The checker's models ([`crate::linearizable`]) as consensus operations
//! on a cluster: each register is a key's field `""`, so the simulator's
//! consensus tests issue the operations the checker reasons about, and
//! read their answers back from the outcomes.

use bytes::Bytes;
use sessmesh_core::{
    Cas, CasError, Condition, GroupCas, GroupComputation, Outcome, Session, Write,
};

use crate::linearizable::{GroupOp, GroupResult, RegisterOp, RegisterResult};

/// A register operation as a consensus operation on its key.
pub fn cas(op: &RegisterOp) -> Cas {
    match op {
        RegisterOp::Read => Cas::Read,
        RegisterOp::SetIfAbsent(v) => Cas::Write {
            when: Condition::Field {
                name: Bytes::new(),
                value: None,
            },
            write: put(Some(v)),
        },
        RegisterOp::SetIf { expect, new } => Cas::Write {
            when: Condition::Field {
                name: Bytes::new(),
                value: expect.clone().map(Bytes::from),
            },
            write: put(new.as_ref()),
        },
        RegisterOp::Add(by) => Cas::Increment {
            field: Bytes::new(),
            by: *by,
            when: Condition::Always,
        },
    }
}

/// The write that leaves the register holding `value` (`None`: absent).
fn put(value: Option<&String>) -> Write {
    match value {
        Some(v) => Write::PutField {
            name: Bytes::new(),
            value: Bytes::from(v.clone()),
        },
        None => Write::DeleteField { name: Bytes::new() },
    }
}

/// The register's value in a session: its field `""`.
pub fn value_of(session: Option<&Session>, now_ms: u64) -> Option<String> {
    session?
        .visible_fields(now_ms)?
        .find(|(n, _)| n.is_empty())
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// The value a write leaves in the register, if it writes one.
fn written_value(write: &Write) -> Option<String> {
    match write {
        Write::PutField { value, .. } => Some(String::from_utf8_lossy(value).into_owned()),
        _ => None,
    }
}

/// What the outcome says a register operation answered; `None` when it may
/// or may not have taken effect; `Some(None)` when it certainly did not.
pub fn observed(
    op: &RegisterOp,
    outcome: Option<&Outcome>,
    now_ms: u64,
) -> Option<Option<RegisterResult>> {
    match outcome {
        None
        | Some(Outcome::Undecided {
            maybe_applied: true,
            ..
        }) => None,
        Some(Outcome::Decided(d)) => Some(Some(match op {
            RegisterOp::Read => RegisterResult::Value(value_of(d.before.as_ref(), now_ms)),
            RegisterOp::Add(_) => {
                RegisterResult::Value(d.written.as_ref().and_then(|(w, _)| written_value(w)))
            }
            RegisterOp::SetIf { .. } | RegisterOp::SetIfAbsent(_) => {
                RegisterResult::Applied(d.applied)
            }
        })),
        Some(Outcome::Refused(reason)) if reason.contains("not an integer") => {
            Some(Some(RegisterResult::NotAnInteger))
        }
        // Refused before anything was proposed, or undecided for certain.
        Some(_) => Some(None),
    }
}

/// A group operation as the consensus request that carries it out on the
/// keys `key` names.
pub enum GroupRequest {
    /// A one-key operation on this key.
    One(String, Cas),
    /// An operation on several keys at once.
    Group(Vec<String>, GroupCas),
}

/// The consensus request for `op`, with `key` naming each register's key
/// and `keys` the number of registers.
pub fn group_request(op: &GroupOp, keys: usize, key: impl Fn(usize) -> String) -> GroupRequest {
    match op {
        GroupOp::One(k, op) => GroupRequest::One(key(*k), cas(op)),
        GroupOp::ReadAll => GroupRequest::Group((0..keys).map(key).collect(), GroupCas::Read),
        GroupOp::Transfer { from, to, amount } => {
            let amount = *amount;
            let transfer = GroupComputation::new(move |states, now_ms| {
                let number = |i: usize| match value_of(states[i], now_ms) {
                    None => Ok(0),
                    Some(v) => v.parse::<i64>().map_err(|_| CasError::NotAnInteger),
                };
                let (a, b) = (number(0)?, number(1)?);
                let set = |v: i64| Some(put(Some(&v.to_string())));
                Ok(vec![set(a - amount), set(b + amount)])
            });
            GroupRequest::Group(vec![key(*from), key(*to)], GroupCas::Compute(transfer))
        }
    }
}

/// What the outcome says a group operation answered, as [`observed`].
pub fn observed_group(
    op: &GroupOp,
    outcome: Option<&Outcome>,
    now_ms: u64,
) -> Option<Option<GroupResult>> {
    let not_an_integer = |reason: &str| {
        reason
            .contains("not an integer")
            .then_some(GroupResult::NotAnInteger)
    };
    match (op, outcome) {
        (GroupOp::One(_, op), _) => Some(observed(op, outcome, now_ms)?.map(GroupResult::One)),
        (
            _,
            None
            | Some(Outcome::Undecided {
                maybe_applied: true,
                ..
            }),
        ) => None,
        (GroupOp::ReadAll, Some(Outcome::DecidedGroup(d))) => {
            let values = d
                .before
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((i, value_of(s.as_ref(), now_ms)?)))
                .collect();
            Some(Some(GroupResult::Values(values)))
        }
        (GroupOp::Transfer { .. }, Some(Outcome::DecidedGroup(d))) => {
            let number = |i: usize| {
                d.written
                    .get(i)
                    .and_then(|(_, w)| written_value(w)?.parse::<i64>().ok())
            };
            // Anything but two integers is an answer the model never gives.
            match (number(0), number(1)) {
                (Some(a), Some(b)) => Some(Some(GroupResult::Moved(a, b))),
                _ => Some(Some(GroupResult::NotAnInteger)),
            }
        }
        (_, Some(Outcome::Refused(reason))) => Some(not_an_integer(reason)),
        (_, Some(_)) => Some(None),
    }
}
