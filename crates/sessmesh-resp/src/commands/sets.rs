//! Sets: `SADD`, `SREM`, `SMEMBERS`, `SISMEMBER`, `SMISMEMBER`, `SCARD`,
//! `SPOP`, `SSCAN`.
//!
//! A set is an observed-remove set (see `values.rs`): each add of a member
//! is a field of its own, named by a zero byte ([`SET_PREFIX`]), the
//! member and the add's tag, with an empty value. Fields merge one by one,
//! so adds on two nodes at once both survive; `SADD` writes a new add and
//! deletes the adds of the member it read; `SREM` deletes the adds it read
//! (at quorum), so an add it did not see, made at the same time elsewhere,
//! survives it. `SPOP` takes members away by consensus, so two pops never
//! return the same member.

use sessmesh::{Cas, Computation};

use super::atomic::decide_failed;
use super::*;

/// The set commands, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Add,
    Card,
    IsMember,
    Members,
    MIsMember,
    Pop,
    Rem,
    Scan,
}

/// A set command, its arguments parsed.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum SetCommand {
    /// `SADD key member [member ...]`.
    Add { key: Bytes, members: Vec<Bytes> },
    /// `SREM key member [member ...]`.
    Rem { key: Bytes, members: Vec<Bytes> },
    /// `SMEMBERS`, and `SSCAN key cursor ...` (every member at once, cursor 0).
    Members {
        key: Bytes,
        scan: Option<Option<Bytes>>,
    },
    /// `SISMEMBER key member` (`one`), `SMISMEMBER key member [member ...]`.
    IsMember {
        key: Bytes,
        members: Vec<Bytes>,
        one: bool,
    },
    /// `SCARD key`.
    Card { key: Bytes },
    /// `SPOP key [count]`: `None` pops one and answers it alone.
    Pop { key: Bytes, count: Option<usize> },
}

/// The members of a set's data, in order.
fn members(data: &SessionData) -> Vec<Bytes> {
    members_of(data.fields().map(|(name, _)| name))
}

/// The field names of the adds of `member` in a set's data.
fn adds_of<'a>(data: &'a SessionData, member: &'a [u8]) -> impl Iterator<Item = Bytes> + 'a {
    data.fields()
        .map(|(name, _)| name)
        .filter(move |name| values::member_of(name) == Some(member))
        .map(Bytes::copy_from_slice)
}

/// Whether `member` is in a set's data.
fn holds(data: &SessionData, member: &[u8]) -> bool {
    adds_of(data, member).next().is_some()
}

impl SetCommand {
    pub(super) fn parse(op: Op, args: &[Bytes]) -> Result<Self, Reply> {
        let key = args[0].clone();
        Ok(match op {
            Op::Add => SetCommand::Add {
                key,
                members: args[1..].to_vec(),
            },
            Op::Rem => SetCommand::Rem {
                key,
                members: args[1..].to_vec(),
            },
            Op::Members => SetCommand::Members { key, scan: None },
            Op::Scan => {
                if int(&args[1]).is_none_or(|c| c < 0) {
                    return Err(err("ERR invalid cursor"));
                }
                let mut pattern = None;
                for option in args[2..].chunks(2) {
                    match option {
                        [o, v] if eq(o, "MATCH") => pattern = Some(v.clone()),
                        [o, v] if eq(o, "COUNT") => {
                            if int(v).is_none_or(|n| n < 1) {
                                return Err(syntax());
                            }
                        }
                        _ => return Err(syntax()),
                    }
                }
                SetCommand::Members {
                    key,
                    scan: Some(pattern),
                }
            }
            Op::IsMember | Op::MIsMember => SetCommand::IsMember {
                key,
                members: args[1..].to_vec(),
                one: op == Op::IsMember,
            },
            Op::Card => SetCommand::Card { key },
            Op::Pop => SetCommand::Pop {
                key,
                count: match args.get(1) {
                    None => None,
                    Some(n) => Some(
                        int(n)
                            .and_then(|n| usize::try_from(n).ok())
                            .ok_or_else(|| err("ERR value is out of range, must be positive"))?,
                    ),
                },
            },
        })
    }

    pub(super) async fn run(self, handler: &Handler) -> Reply {
        let result = match self {
            SetCommand::Add { key, members } => handler.sadd(key, members).await,
            SetCommand::Rem { key, members } => handler.srem(key, members).await,
            SetCommand::Members { key, scan } => handler.smembers(&key, scan).await,
            SetCommand::IsMember { key, members, one } => {
                handler.sismember(&key, &members, one).await
            }
            SetCommand::Card { key } => handler.read_set(&key).await.map(|d| {
                Reply::Int(d.map_or(0, |d| i64::try_from(members(&d).len()).unwrap_or(i64::MAX)))
            }),
            SetCommand::Pop { key, count } => handler.spop(&key, count).await,
        };
        result.unwrap_or_else(|reply| reply)
    }
}

impl Handler {
    /// The set under `key`; `WRONGTYPE` for a string or a hash.
    async fn read_set(&self, key: &Bytes) -> Result<Option<SessionData>, Reply> {
        match self.read(key).await? {
            None => Ok(None),
            Some(Value::Set(data)) => Ok(Some(data)),
            Some(Value::String { .. } | Value::Hash(_)) => Err(wrong_type()),
        }
    }

    /// What one replica holds of a set, for a write that reads only to
    /// count what it changes (as `HSET` does).
    async fn glance_set(&self, key: &Bytes) -> Result<Option<SessionData>, Reply> {
        match self.glance(key).await? {
            None => Ok(None),
            Some(Value::Set(data)) => Ok(Some(data)),
            Some(Value::String { .. } | Value::Hash(_)) => Err(wrong_type()),
        }
    }

    /// `SADD`: a new add of each member, and the adds of it that the
    /// nearest replica holds deleted (the new one stands for them).
    async fn sadd(&self, key: Bytes, members: Vec<Bytes>) -> Result<Reply, Reply> {
        let existing = self.glance_set(&key).await?;
        let mut seen = std::collections::HashSet::new();
        let mut added = 0;
        let mut writes = Vec::new();
        for member in members.iter().filter(|m| seen.insert(*m)) {
            let old: Vec<Bytes> = existing
                .as_ref()
                .map(|d| adds_of(d, member).collect())
                .unwrap_or_default();
            added += usize::from(old.is_empty());
            writes.push(Write::PutField {
                name: member_field(member, self.tags.next()),
                value: Bytes::new(),
            });
            writes.extend(old.into_iter().map(|name| Write::DeleteField { name }));
        }
        self.write_all(writes.into_iter().map(|w| (key.clone(), w)))
            .await?;
        Ok(Reply::Int(i64::try_from(added).unwrap_or(i64::MAX)))
    }

    /// `SREM`: the adds of each member that a quorum read sees, deleted.
    async fn srem(&self, key: Bytes, members: Vec<Bytes>) -> Result<Reply, Reply> {
        let existing = self.read_set(&key).await?;
        let mut seen = std::collections::HashSet::new();
        let mut removed = 0;
        let mut writes = Vec::new();
        for member in members.iter().filter(|m| seen.insert(*m)) {
            let adds: Vec<Bytes> = existing
                .as_ref()
                .map(|d| adds_of(d, member).collect())
                .unwrap_or_default();
            removed += usize::from(!adds.is_empty());
            writes.extend(adds.into_iter().map(|name| Write::DeleteField { name }));
        }
        self.write_all(writes.into_iter().map(|w| (key.clone(), w)))
            .await?;
        Ok(Reply::Int(i64::try_from(removed).unwrap_or(i64::MAX)))
    }

    async fn smembers(&self, key: &Bytes, scan: Option<Option<Bytes>>) -> Result<Reply, Reply> {
        let data = self.read_set(key).await?;
        let all: Vec<Reply> = data
            .as_ref()
            .map(|d| {
                members(d)
                    .into_iter()
                    .filter(|m| match &scan {
                        Some(Some(pattern)) => glob::matches(pattern, m),
                        _ => true,
                    })
                    .map(Reply::Bulk)
                    .collect()
            })
            .unwrap_or_default();
        Ok(match scan {
            // SSCAN: all at once, and the scan is done.
            Some(_) => Reply::Array(vec![Reply::bulk("0"), Reply::Array(all)]),
            None => Reply::Array(all),
        })
    }

    async fn sismember(&self, key: &Bytes, asked: &[Bytes], one: bool) -> Result<Reply, Reply> {
        let data = self.read_set(key).await?;
        let mut answers = asked
            .iter()
            .map(|m| Reply::Int(i64::from(data.as_ref().is_some_and(|d| holds(d, m)))));
        Ok(if one {
            answers.next().unwrap_or(Reply::Int(0))
        } else {
            Reply::Array(answers.collect())
        })
    }

    /// `SPOP`: one consensus operation that writes the set without the
    /// members it takes (chosen by the coordinator's clock), so that two
    /// pops never take the same member.
    async fn spop(&self, key: &Bytes, count: Option<usize>) -> Result<Reply, Reply> {
        let take = count.unwrap_or(1);
        let computation = Computation::new(move |current, now_ms| {
            let Some(fields) = current.and_then(|s| s.visible_fields(now_ms)) else {
                return Ok(None);
            };
            let mut names: Vec<Bytes> = fields.map(|(n, _)| n.clone()).collect();
            if names.iter().any(|n| !n.starts_with(SET_PREFIX)) {
                return Err(sessmesh::CasError::Refused(
                    "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
                ));
            }
            if names.is_empty() || take == 0 {
                return Ok(None);
            }
            // A rotation by the clock: which members go differs from call
            // to call, and is the same for every attempt at one state.
            let mut all = members_of(names.iter().map(|n| n.as_ref()));
            let start = usize::try_from(now_ms).unwrap_or(0) % all.len();
            all.rotate_left(start);
            let popped: Vec<Bytes> = all.into_iter().take(take).collect();
            names.retain(|n| values::member_of(n).is_none_or(|m| !popped.iter().any(|p| p == m)));
            let keep: Vec<(Bytes, Bytes)> = names.into_iter().map(|n| (n, Bytes::new())).collect();
            let expiry = current
                .and_then(|s| s.deadline_ms())
                .map_or(Expiry::NEVER, Expiry::at_ms);
            Ok(Some(if keep.is_empty() {
                Write::Delete
            } else {
                Write::Put {
                    fields: keep,
                    expiry,
                }
            }))
        });
        let decision = self
            .node
            .cas(key.clone(), Cas::Compute(computation))
            .await
            .map_err(|e| decide_failed(&e, "value"))?;
        let now = u64::try_from(now_ms()).unwrap_or(0);
        let before: Vec<Bytes> = decision
            .before
            .as_ref()
            .and_then(|s| SessionData::new(key, s, now))
            .map(|d| members(&d))
            .unwrap_or_default();
        let kept: Vec<Bytes> = match &decision.written {
            Some((Write::Put { fields, .. }, _)) => {
                members_of(fields.iter().map(|(n, _)| n.as_ref()))
            }
            _ => Vec::new(),
        };
        let popped: Vec<Reply> = if decision.applied {
            before
                .into_iter()
                .filter(|m| !kept.contains(m))
                .map(Reply::Bulk)
                .collect()
        } else {
            Vec::new()
        };
        Ok(match count {
            None => popped.into_iter().next().unwrap_or(Reply::Nil),
            Some(_) => Reply::Array(popped),
        })
    }
}
