//! What the string and hash families share for the commands that must be
//! atomic across the cluster (`SET` with `NX`, `XX` or `GET`, `SETNX`,
//! `GETSET`, `GETDEL`, the `INCR` family, `HSETNX`, `HINCRBY`,
//! `HINCRBYFLOAT`, the locks): each is one consensus operation among the
//! key's replicas (see `sessmesh::Node::cas`), linearizable with every
//! other such operation on the key.

use sessmesh::{Cas, Condition, Decision};

use super::*;

/// How a consensus error reads to a Redis client. `what` names the value
/// (`value`, `hash value`) in Redis's own wording.
pub(super) fn decide_failed(error: &Error, what: &str) -> Reply {
    match error {
        Error::Undecided {
            reason,
            maybe_applied: false,
        } => Reply::Error(format!("TRYAGAIN {reason}; nothing was written")),
        Error::Undecided {
            reason,
            maybe_applied: true,
        } => Reply::Error(format!(
            "UNCERTAIN {reason}; the write may still take effect"
        )),
        // A computation's refusal is the reply itself.
        Error::Refused(why) if why.starts_with("WRONGTYPE") || why.starts_with("ERR ") => {
            Reply::Error(why.clone())
        }
        Error::Refused(why) if why.contains("overflow") => {
            err("ERR increment or decrement would overflow")
        }
        Error::Refused(why) if why.contains("not an integer") => match what {
            "value" => err("ERR value is not an integer or out of range"),
            _ => Reply::Error(format!("ERR {what} is not an integer")),
        },
        Error::Refused(why) if why.contains("float") => {
            Reply::Error(format!("ERR {what} is not a valid float"))
        }
        other => failed(other),
    }
}

impl Handler {
    /// Decides `op` on `key` by consensus.
    pub(super) async fn decide(&self, key: &Bytes, op: Cas, what: &str) -> Result<Decision, Reply> {
        self.node
            .cas(key.clone(), op)
            .await
            .map_err(|e| decide_failed(&e, what))
    }

    /// What the key held when `decision` was taken, as a reader sees it.
    pub(super) fn before(key: &[u8], decision: &Decision) -> Option<Value> {
        let now = u64::try_from(now_ms()).unwrap_or(0);
        decision
            .before
            .as_ref()
            .and_then(|s| SessionData::new(key, s, now))
            .map(value_of)
    }

    /// The integer an increment wrote.
    pub(super) fn written_int(decision: &Decision) -> Result<i64, Reply> {
        Self::written(decision)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .ok_or_else(|| err("ERR the increment wrote no integer"))
    }

    /// The value a one-field write wrote.
    pub(super) fn written(decision: &Decision) -> Option<&Bytes> {
        match &decision.written {
            Some((Write::PutField { value, .. }, _)) => Some(value),
            _ => None,
        }
    }
}

/// The condition that a key holds a string, or nothing.
pub(super) fn string_or_absent() -> Condition {
    Condition::OnlyField(Bytes::from_static(STRING_FIELD))
}

/// The condition that a key holds a hash, or nothing: no string field.
pub(super) fn hash_or_absent() -> Condition {
    Condition::All(vec![
        Condition::Field {
            name: Bytes::from_static(STRING_FIELD),
            value: None,
        },
        Condition::NoFieldPrefixed(Bytes::from_static(SET_PREFIX)),
    ])
}
