//! Locks as consensus operations: a lock is a key whose session holds its
//! holder, its lease's end and the last fencing token given (see
//! docs/consistency.md, "Locks and their tokens").

use bytes::Bytes;

use super::field;
use crate::session::{Expiry, Session, Write};

/// The fields a lock keeps in its key's session.
pub mod lock_fields {
    /// Who holds the lock (absent when free).
    pub const HOLDER: &[u8] = b"holder";
    /// The fencing token of the last lease given.
    pub const TOKEN: &[u8] = b"token";
    /// When the current lease runs out, wall-clock ms.
    pub const UNTIL: &[u8] = b"until";
}

/// A lock held: what [`Cas::Lock`](super::Cas::Lock) gave, read from the write it decided.
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

/// A lock's state as its session holds it.
pub(super) struct LockState<'s> {
    pub(super) holder: Option<&'s Bytes>,
    pub(super) token: u64,
    /// Whether a lease is held and has not run out.
    pub(super) live: bool,
}

pub(super) fn lock_state(session: Option<&Session>, now_ms: u64) -> LockState<'_> {
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
pub(super) fn lease_write(holder: &Bytes, token: u64, until_ms: u64) -> Write {
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
