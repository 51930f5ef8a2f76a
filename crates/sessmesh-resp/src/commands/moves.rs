//! Moving values between keys: `RENAME`, `RENAMENX` and `COPY`.
//!
//! Two keys live in two partitions with their own replicas, so a move is
//! steps, each one consensus operation on one key: read the source; write
//! the destination (for `RENAMENX` and `COPY` without `REPLACE`, only if
//! it is absent); and for a rename, delete the source only if it still
//! holds what was read. A write to the source between the read and the
//! delete stays there rather than being lost, and the destination holds
//! what was read (docs/protocol.md). The value keeps its expiry.

use sessmesh::{Cas, Computation, Condition};
use sessmesh_core::Stamp;

use super::*;

/// The commands that move values, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Copy,
    Rename,
    RenameNx,
}

/// A move, its arguments parsed.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Move {
    from: Bytes,
    to: Bytes,
    /// Whether the source goes (`RENAME`, `RENAMENX`) or stays (`COPY`).
    keep_source: bool,
    /// Whether an existing destination is replaced.
    replace: bool,
    /// The reply is 1 or 0 (`RENAMENX`, `COPY`) rather than `OK`.
    counts: bool,
}

impl Move {
    pub(super) fn parse(op: Op, args: &[Bytes]) -> Result<Self, Reply> {
        let (from, to) = (args[0].clone(), args[1].clone());
        Ok(match op {
            Op::Rename => Move {
                from,
                to,
                keep_source: false,
                replace: true,
                counts: false,
            },
            Op::RenameNx => Move {
                from,
                to,
                keep_source: false,
                replace: false,
                counts: true,
            },
            Op::Copy => {
                let mut replace = false;
                for option in &args[2..] {
                    if eq(option, "REPLACE") {
                        replace = true;
                    } else {
                        // `DB` would copy across databases: not offered.
                        return Err(syntax());
                    }
                }
                Move {
                    from,
                    to,
                    keep_source: true,
                    replace,
                    counts: true,
                }
            }
        })
    }

    pub(super) async fn run(self, handler: &Handler) -> Reply {
        handler.move_value(self).await.unwrap_or_else(|reply| reply)
    }
}

impl Handler {
    async fn move_value(&self, m: Move) -> Result<Reply, Reply> {
        let read = self.decide(&m.from, Cas::Read, "value").await?;
        let now = u64::try_from(now_ms()).unwrap_or(0);
        let Some((session, data)) = read
            .before
            .as_ref()
            .and_then(|s| SessionData::new(&m.from, s, now).map(|d| (s, d)))
        else {
            return Ok(if m.counts {
                Reply::Int(0)
            } else {
                err("ERR no such key")
            });
        };
        if m.from == m.to {
            // As Redis: renaming a key to itself changes nothing, and
            // copying one onto itself is refused.
            return Ok(match (m.keep_source, m.counts) {
                (true, _) => err("ERR source and destination objects are the same"),
                (false, true) => Reply::Int(0),
                (false, false) => Reply::Ok,
            });
        }
        let read_stamp = session.newest_stamp();
        let fields: Vec<(Bytes, Bytes)> = data
            .fields()
            .map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)))
            .collect();
        let expiry = data.deadline_ms().map_or(Expiry::NEVER, Expiry::at_ms);
        let when = if m.replace {
            Condition::Always
        } else {
            Condition::Absent
        };
        let written = self
            .decide(
                &m.to,
                Cas::Write {
                    when,
                    write: Write::Put { fields, expiry },
                },
                "value",
            )
            .await?;
        if !written.applied {
            return Ok(Reply::Int(0));
        }
        if !m.keep_source {
            self.decide(
                &m.from,
                Cas::Compute(delete_if_unchanged(read_stamp)),
                "value",
            )
            .await?;
        }
        Ok(if m.counts { Reply::Int(1) } else { Reply::Ok })
    }
}

/// Deletes a key only if its newest write is still the one at `stamp`.
fn delete_if_unchanged(stamp: Stamp) -> Computation {
    Computation::new(move |current, _| {
        Ok(current
            .filter(|s| s.newest_stamp() == stamp)
            .map(|_| Write::Delete))
    })
}
