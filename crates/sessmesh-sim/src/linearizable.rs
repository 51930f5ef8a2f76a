//! A linearizability checker for a history of consensus operations, by
//! Wing and Gong's search with Lowe's memoization (as Knossos and Porcupine
//! do): is there an order of the operations, each placed between its
//! invocation and its answer, in which a sequential model (one key's
//! register, [`RegisterOp`]; or the registers of a hash tag's keys,
//! [`GroupOp`]) gives every answer that was observed?
//!
//! An operation whose outcome is unknown (no answer, or answered "may still
//! take effect") may take effect at any point after its invocation, or
//! never; one answered "did not take effect" is left out.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// An operation of a sequential model.
pub trait Operation: Clone + Debug {
    /// The model's state; the history starts from its default.
    type State: Clone + Debug + Default + Eq + Hash;
    /// What an operation answers.
    type Result: Clone + Debug + Eq;
    /// The state after the operation, and its answer.
    fn apply(&self, state: &Self::State) -> (Self::State, Self::Result);
}

/// What an operation does to the register (the key's value; `None`: absent).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// Reads the value.
    Read,
    /// Sets `new` if the value is `expect`.
    SetIf {
        /// The value it must find.
        expect: Option<String>,
        /// The value it writes (`None`: deletes).
        new: Option<String>,
    },
    /// Sets `value` if the register is absent.
    SetIfAbsent(String),
    /// Adds `by` to the integer value (absent: 0).
    Add(i64),
}

/// What an operation answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterResult {
    /// Whether a conditional write applied.
    Applied(bool),
    /// The value read, or the value an addition left.
    Value(Option<String>),
    /// The value was not an integer (an addition refused).
    NotAnInteger,
}

impl Operation for RegisterOp {
    type State = Option<String>;
    type Result = RegisterResult;

    /// The register after the operation, and its answer.
    fn apply(&self, state: &Option<String>) -> (Option<String>, RegisterResult) {
        match self {
            RegisterOp::Read => (state.clone(), RegisterResult::Value(state.clone())),
            RegisterOp::SetIf { expect, new } => {
                if state == expect {
                    (new.clone(), RegisterResult::Applied(true))
                } else {
                    (state.clone(), RegisterResult::Applied(false))
                }
            }
            RegisterOp::SetIfAbsent(value) => match state {
                None => (Some(value.clone()), RegisterResult::Applied(true)),
                Some(_) => (state.clone(), RegisterResult::Applied(false)),
            },
            RegisterOp::Add(by) => {
                let old = match state {
                    None => Some(0),
                    Some(v) => v.parse::<i64>().ok(),
                };
                match old.and_then(|o| o.checked_add(*by)) {
                    Some(new) => (
                        Some(new.to_string()),
                        RegisterResult::Value(Some(new.to_string())),
                    ),
                    None => (state.clone(), RegisterResult::NotAnInteger),
                }
            }
        }
    }
}

/// An operation on the registers of a hash tag's keys (each absent at
/// first), some on one key, some on several at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GroupOp {
    /// A register operation on one key.
    One(usize, RegisterOp),
    /// Reads every key at one point in time.
    ReadAll,
    /// Moves `amount` from the integer in `from` to the one in `to`
    /// (absent: 0); refused, changing nothing, when either holds something
    /// else.
    Transfer {
        /// The key taken from.
        from: usize,
        /// The key added to.
        to: usize,
        /// How much.
        amount: i64,
    },
}

/// What a [`GroupOp`] answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GroupResult {
    /// A one-key operation's answer.
    One(RegisterResult),
    /// Each key's value (present ones only), as `ReadAll` saw them.
    Values(BTreeMap<usize, String>),
    /// A transfer: the two keys' new values.
    Moved(i64, i64),
    /// A transfer found a value that is not an integer.
    NotAnInteger,
}

impl Operation for GroupOp {
    /// Each present key's value.
    type State = BTreeMap<usize, String>;
    type Result = GroupResult;

    fn apply(&self, state: &Self::State) -> (Self::State, GroupResult) {
        match self {
            GroupOp::One(key, op) => {
                let (value, result) = op.apply(&state.get(key).cloned());
                let mut next = state.clone();
                match value {
                    Some(v) => next.insert(*key, v),
                    None => next.remove(key),
                };
                (next, GroupResult::One(result))
            }
            GroupOp::ReadAll => (state.clone(), GroupResult::Values(state.clone())),
            GroupOp::Transfer { from, to, amount } => {
                let number = |key| match state.get(key) {
                    None => Some(0),
                    Some(v) => v.parse::<i64>().ok(),
                };
                let (Some(a), Some(b)) = (number(from), number(to)) else {
                    return (state.clone(), GroupResult::NotAnInteger);
                };
                let (a, b) = (a - amount, b + amount);
                let mut next = state.clone();
                next.insert(*from, a.to_string());
                next.insert(*to, b.to_string());
                (next, GroupResult::Moved(a, b))
            }
        }
    }
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<O: Operation = RegisterOp> {
    /// What it did.
    pub op: O,
    /// When it was invoked, ms of virtual time.
    pub invoked_ms: u64,
    /// When it was answered, and what, if that is known. `None`: it may
    /// take effect at any point after its invocation, or never.
    pub answered: Option<(u64, O::Result)>,
}

/// Whether `history` (starting from the model's default state: every key
/// absent) is linearizable.
///
/// # Errors
/// A description of the history when no order explains it.
pub fn check<O: Operation>(history: &[Event<O>]) -> Result<(), String> {
    assert!(history.len() <= 64, "a history of at most 64 operations");
    let mut memo = HashSet::new();
    if search(history, 0, &O::State::default(), &mut memo) {
        Ok(())
    } else {
        let mut sorted: Vec<&Event<O>> = history.iter().collect();
        sorted.sort_by_key(|e| e.invoked_ms);
        let lines: Vec<String> = sorted
            .iter()
            .map(|e| match &e.answered {
                Some((at, result)) => {
                    format!("  {}..{at} ms {:?} -> {result:?}", e.invoked_ms, e.op)
                }
                None => format!("  {}..? ms {:?} -> unknown", e.invoked_ms, e.op),
            })
            .collect();
        Err(format!(
            "no linearization of these {} operations:\n{}",
            history.len(),
            lines.join("\n")
        ))
    }
}

/// Whether the operations not in `done` can be linearized from `state`.
fn search<O: Operation>(
    history: &[Event<O>],
    done: u64,
    state: &O::State,
    memo: &mut HashSet<(u64, O::State)>,
) -> bool {
    // Done when every answered operation is placed; unknown ones may never
    // have taken effect.
    let pending = |i: usize| done & (1 << i) == 0;
    if (0..history.len()).all(|i| !pending(i) || history[i].answered.is_none()) {
        return true;
    }
    if !memo.insert((done, state.clone())) {
        return false;
    }
    // The earliest answer among the pending: nothing invoked after it can
    // come before it.
    let horizon = (0..history.len())
        .filter(|&i| pending(i))
        .filter_map(|i| history[i].answered.as_ref().map(|(at, _)| *at))
        .min()
        .unwrap_or(u64::MAX);
    for (i, event) in history.iter().enumerate() {
        if !pending(i) || event.invoked_ms > horizon {
            continue;
        }
        let (next, result) = event.op.apply(state);
        if let Some((_, observed)) = &event.answered
            && *observed != result
        {
            continue;
        }
        if search(history, done | (1 << i), &next, memo) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: RegisterOp, from: u64, to: u64, result: RegisterResult) -> Event {
        Event {
            op,
            invoked_ms: from,
            answered: Some((to, result)),
        }
    }

    #[test]
    fn two_creates_that_both_won_are_caught() {
        let a = RegisterOp::SetIfAbsent("a".into());
        let b = RegisterOp::SetIfAbsent("b".into());
        let won = RegisterResult::Applied(true);
        // Overlapping or not, both cannot have found the key absent.
        assert!(
            check(&[
                op(a.clone(), 0, 10, won.clone()),
                op(b.clone(), 5, 15, won.clone())
            ])
            .is_err()
        );
        let lost = RegisterResult::Applied(false);
        assert!(check(&[op(a, 0, 10, won), op(b, 5, 15, lost)]).is_ok());
    }

    #[test]
    fn a_read_after_a_write_answered_must_see_it() {
        let write = op(
            RegisterOp::SetIfAbsent("x".into()),
            0,
            10,
            RegisterResult::Applied(true),
        );
        let stale = op(RegisterOp::Read, 20, 30, RegisterResult::Value(None));
        assert!(check(&[write.clone(), stale]).is_err());
        // Overlapping the write, the read may come first.
        let early = op(RegisterOp::Read, 5, 30, RegisterResult::Value(None));
        assert!(check(&[write, early]).is_ok());
    }

    #[test]
    fn a_read_of_all_keys_must_not_see_half_a_transfer() {
        let event = |op, from, to, result| Event {
            op,
            invoked_ms: from,
            answered: Some((to, result)),
        };
        let transfer = GroupOp::Transfer {
            from: 0,
            to: 1,
            amount: 5,
        };
        let values = |pairs: &[(usize, &str)]| {
            GroupResult::Values(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect())
        };
        let moved = event(transfer, 0, 10, GroupResult::Moved(-5, 5));
        // During the transfer: all of it or none of it.
        let none = event(GroupOp::ReadAll, 5, 15, values(&[]));
        let all = event(GroupOp::ReadAll, 5, 15, values(&[(0, "-5"), (1, "5")]));
        let half = event(GroupOp::ReadAll, 5, 15, values(&[(0, "-5")]));
        assert!(check(&[moved.clone(), none]).is_ok());
        assert!(check(&[moved.clone(), all]).is_ok());
        assert!(check(&[moved.clone(), half]).is_err());
        // A one-key read after it must see it.
        let stale = event(
            GroupOp::One(1, RegisterOp::Read),
            20,
            30,
            GroupResult::One(RegisterResult::Value(None)),
        );
        assert!(check(&[moved, stale]).is_err());
    }

    #[test]
    fn increments_must_add_up_and_unknown_ones_may_count_or_not() {
        let add = |from, to, v: i64| {
            op(
                RegisterOp::Add(1),
                from,
                to,
                RegisterResult::Value(Some(v.to_string())),
            )
        };
        assert!(check(&[add(0, 10, 1), add(20, 30, 2)]).is_ok());
        assert!(check(&[add(0, 10, 1), add(20, 30, 3)]).is_err());
        let unknown = Event {
            op: RegisterOp::Add(1),
            invoked_ms: 12,
            answered: None,
        };
        assert!(check(&[add(0, 10, 1), unknown.clone(), add(20, 30, 3)]).is_ok());
        assert!(check(&[add(0, 10, 1), unknown, add(20, 30, 2)]).is_ok());
    }
}
