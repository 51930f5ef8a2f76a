//! Fenced locks for Redis clients, as a module-style command family:
//!
//! - `SESSMESH.LOCK key ttl-ms`: takes the lock `key` for `ttl-ms` if
//!   nobody holds it; the lease's fencing token (an integer), or nil when it
//!   is held.
//! - `SESSMESH.RENEW key token ttl-ms`: extends the lease `token` to
//!   `ttl-ms` from now; 1, or 0 when it ran out or was ended.
//! - `SESSMESH.UNLOCK key token`: ends the lease `token`; 1, or 0 when it
//!   had already run out or ended.
//!
//! Each is one consensus operation (see `atomic.rs`). Every lease of a key
//! has a greater token than the leases before it, across unlocks,
//! expiries and nodes: hand it to what the lock protects, and have that
//! refuse a token older than the newest it saw.

use std::sync::atomic::{AtomicU64, Ordering};

use sessmesh::Cas;
use sessmesh_core::consensus::Lease;

use super::*;

/// The lock commands, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Lock,
    Renew,
    Unlock,
}

/// A lock command, its arguments parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum LockCommand {
    Lock { key: Bytes, ttl_ms: u64 },
    Renew { key: Bytes, token: u64, ttl_ms: u64 },
    Unlock { key: Bytes, token: u64 },
}

/// Makes each lock attempt's holder unique within this process.
static ATTEMPTS: AtomicU64 = AtomicU64::new(0);

/// A positive number of milliseconds.
fn ttl(arg: &[u8]) -> Result<u64, Reply> {
    match int(arg) {
        Some(n) if n > 0 => Ok(n.unsigned_abs()),
        Some(_) => Err(err("ERR the lease's time to live must be positive")),
        None => Err(not_integer()),
    }
}

fn token(arg: &[u8]) -> Result<u64, Reply> {
    int(arg)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(not_integer)
}

impl LockCommand {
    /// Parses the arguments after the name, their number already checked.
    pub(super) fn parse(op: Op, args: &[Bytes]) -> Result<Self, Reply> {
        let key = args[0].clone();
        Ok(match op {
            Op::Lock => LockCommand::Lock {
                key,
                ttl_ms: ttl(&args[1])?,
            },
            Op::Renew => LockCommand::Renew {
                key,
                token: token(&args[1])?,
                ttl_ms: ttl(&args[2])?,
            },
            Op::Unlock => LockCommand::Unlock {
                key,
                token: token(&args[1])?,
            },
        })
    }

    pub(super) async fn run(self, handler: &Handler) -> Reply {
        let (key, op) = match self {
            LockCommand::Lock { key, ttl_ms } => {
                let holder = Bytes::from(format!(
                    "resp/{}/{}",
                    handler.node.me().name,
                    ATTEMPTS.fetch_add(1, Ordering::Relaxed)
                ));
                (key, Cas::Lock { holder, ttl_ms })
            }
            LockCommand::Renew { key, token, ttl_ms } => (
                key,
                Cas::Renew {
                    holder: None,
                    token,
                    ttl_ms,
                },
            ),
            LockCommand::Unlock { key, token } => (
                key,
                Cas::Unlock {
                    holder: None,
                    token,
                },
            ),
        };
        let locking = matches!(op, Cas::Lock { .. });
        match handler.decide(&key, op, "value").await {
            Err(reply) => reply,
            Ok(decision) if locking => decision
                .written
                .as_ref()
                .and_then(|(write, _)| Lease::from_write(write))
                .map_or(Reply::Nil, |lease| {
                    Reply::Int(i64::try_from(lease.token).unwrap_or(i64::MAX))
                }),
            Ok(decision) => Reply::Int(i64::from(decision.applied)),
        }
    }
}
