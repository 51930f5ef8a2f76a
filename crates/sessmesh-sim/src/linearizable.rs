//! A linearizability checker for one key's history of consensus operations,
//! by Wing and Gong's search with Lowe's memoization (as Knossos and
//! Porcupine do): is there an order of the operations, each placed between
//! its invocation and its answer, in which a single register gives every
//! answer that was observed?
//!
//! An operation whose outcome is unknown (no answer, or answered "may still
//! take effect") may take effect at any point after its invocation, or
//! never; one answered "did not take effect" is left out.

use std::collections::HashSet;

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

impl RegisterOp {
    /// The register after the operation, and its answer.
    pub fn apply(&self, state: &Option<String>) -> (Option<String>, RegisterResult) {
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

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// What it did.
    pub op: RegisterOp,
    /// When it was invoked, ms of virtual time.
    pub invoked_ms: u64,
    /// When it was answered, and what, if that is known. `None`: it may
    /// take effect at any point after its invocation, or never.
    pub answered: Option<(u64, RegisterResult)>,
}

/// Whether `history` (of one key, starting absent) is linearizable.
///
/// # Errors
/// A description of the history when no order explains it.
pub fn check(history: &[Event]) -> Result<(), String> {
    assert!(history.len() <= 64, "a history of at most 64 operations");
    let mut memo = HashSet::new();
    if search(history, 0, &None, &mut memo) {
        Ok(())
    } else {
        let mut sorted: Vec<&Event> = history.iter().collect();
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
fn search(
    history: &[Event],
    done: u64,
    state: &Option<String>,
    memo: &mut HashSet<(u64, Option<String>)>,
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
