//! Strings: `GET`, `SET` and its options, `SETEX`, `PSETEX`, `SETNX`,
//! `GETSET`, `GETDEL`, `GETEX`, `MGET`, `MSET`, and the `INCR` family.
//! `SET` with `NX`, `XX` or `GET`, `SETNX`, `GETSET`, `GETDEL` and the
//! `INCR` family are atomic across the cluster (see `atomic.rs`).

use sessmesh::{Cas, Computation};

use super::atomic::string_or_absent;
use super::*;

/// The string commands, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Decr,
    DecrBy,
    Get,
    GetDel,
    GetEx,
    GetSet,
    Incr,
    IncrBy,
    IncrByFloat,
    MGet,
    MSet,
    MSetNx,
    PSetEx,
    Set,
    SetEx,
    SetNx,
}

/// A string command, its arguments parsed.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum StringCommand {
    /// `GET key`.
    Get { key: Bytes },
    /// `SET`, and `SETEX` and `PSETEX` as the `SET` they stand for.
    Set(Set),
    /// `GETDEL key`.
    GetDel { key: Bytes },
    /// `GETEX key [EX|PX|EXAT|PXAT n | PERSIST]`.
    GetEx {
        key: Bytes,
        /// The expiry to give the key; `None` leaves it.
        change: Option<NewExpiry>,
    },
    /// `MGET key [key ...]`.
    MGet { keys: Vec<Bytes> },
    /// `MSET key value [key value ...]`.
    MSet { pairs: Vec<(Bytes, Bytes)> },
    /// `MSETNX key value [key value ...]`.
    MSetNx { pairs: Vec<(Bytes, Bytes)> },
    /// `SETNX key value`.
    SetNx { key: Bytes, value: Bytes },
    /// `INCR`, `DECR`, `INCRBY`, `DECRBY`: add `by`.
    IncrBy { key: Bytes, by: i64 },
    /// `INCRBYFLOAT key increment`.
    IncrByFloat { key: Bytes, by: f64 },
}

/// `SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT n | KEEPTTL]`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Set {
    pub(super) key: Bytes,
    pub(super) value: Bytes,
    pub(super) condition: Option<Condition>,
    /// `GET`: reply with the value it replaces.
    pub(super) get: bool,
    pub(super) expiry: SetExpiry,
}

/// When a `SET` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Condition {
    /// `NX`: only if the key holds nothing.
    Absent,
    /// `XX`: only if the key holds something.
    Present,
}

/// The expiry a `SET` gives its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SetExpiry {
    /// None: the key does not expire.
    Never,
    /// `KEEPTTL`: the deadline the key had.
    Keep,
    /// `EX`, `PX`, `EXAT` or `PXAT`: this deadline, in Unix milliseconds.
    At(i64),
}

/// What `GETEX` does to a key's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NewExpiry {
    /// `PERSIST`: no deadline.
    Persist,
    /// `EX`, `PX`, `EXAT` or `PXAT`: this deadline, in Unix milliseconds.
    At(i64),
}

impl StringCommand {
    /// Parses the arguments after the name, their number already checked;
    /// relative deadlines count from `now_ms`.
    pub(super) fn parse(op: Op, args: &[Bytes], now_ms: i64) -> Result<Self, Reply> {
        Ok(match op {
            Op::Get => StringCommand::Get {
                key: args[0].clone(),
            },
            Op::Set => {
                StringCommand::Set(Set::parse(&args[0], &args[1], &args[2..], "set", now_ms)?)
            }
            Op::SetEx | Op::PSetEx => {
                let (unit, command) = match op {
                    Op::SetEx => (DeadlineUnit::Seconds, "setex"),
                    _ => (DeadlineUnit::Millis, "psetex"),
                };
                let at = deadline(unit, &args[1], command, now_ms)?;
                StringCommand::Set(Set {
                    key: args[0].clone(),
                    value: args[2].clone(),
                    condition: None,
                    get: false,
                    expiry: SetExpiry::At(at),
                })
            }
            Op::GetDel => StringCommand::GetDel {
                key: args[0].clone(),
            },
            Op::GetEx => {
                let change = match &args[1..] {
                    [] => None,
                    [o] if eq(o, "PERSIST") => Some(NewExpiry::Persist),
                    [o, n] => match DeadlineUnit::parse(o) {
                        Some(unit) => Some(NewExpiry::At(deadline(unit, n, "getex", now_ms)?)),
                        None => return Err(syntax()),
                    },
                    _ => return Err(syntax()),
                };
                StringCommand::GetEx {
                    key: args[0].clone(),
                    change,
                }
            }
            Op::MGet => StringCommand::MGet {
                keys: args.to_vec(),
            },
            Op::SetNx => StringCommand::SetNx {
                key: args[0].clone(),
                value: args[1].clone(),
            },
            Op::GetSet => StringCommand::Set(Set {
                key: args[0].clone(),
                value: args[1].clone(),
                condition: None,
                get: true,
                expiry: SetExpiry::Never,
            }),
            Op::Incr | Op::Decr => StringCommand::IncrBy {
                key: args[0].clone(),
                by: if op == Op::Incr { 1 } else { -1 },
            },
            Op::IncrBy | Op::DecrBy => {
                let n = int(&args[1]).ok_or_else(not_integer)?;
                let by = if op == Op::IncrBy {
                    n
                } else {
                    n.checked_neg()
                        .ok_or_else(|| err("ERR decrement would overflow"))?
                };
                StringCommand::IncrBy {
                    key: args[0].clone(),
                    by,
                }
            }
            Op::IncrByFloat => StringCommand::IncrByFloat {
                key: args[0].clone(),
                by: float(&args[1]).ok_or_else(|| err("ERR value is not a valid float"))?,
            },
            Op::MSet | Op::MSetNx => {
                if !args.len().is_multiple_of(2) {
                    return Err(arity(if op == Op::MSet { "mset" } else { "msetnx" }));
                }
                let pairs = args
                    .chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect();
                if op == Op::MSet {
                    StringCommand::MSet { pairs }
                } else {
                    StringCommand::MSetNx { pairs }
                }
            }
        })
    }

    pub(super) async fn run(self, handler: &Handler) -> Reply {
        let result = match self {
            StringCommand::Get { key } => handler.get(&key).await,
            StringCommand::Set(set) => handler.set(set).await,
            StringCommand::GetDel { key } => handler.getdel(&key).await,
            StringCommand::GetEx { key, change } => handler.getex(&key, change).await,
            StringCommand::MGet { keys } => handler.mget(&keys).await,
            StringCommand::MSet { pairs } => handler.mset(pairs).await,
            StringCommand::MSetNx { pairs } => handler.msetnx(pairs).await,
            StringCommand::SetNx { key, value } => handler.setnx(key, value).await,
            StringCommand::IncrBy { key, by } => handler.incrby(&key, by).await,
            StringCommand::IncrByFloat { key, by } => handler.incrbyfloat(&key, by).await,
        };
        result.unwrap_or_else(|reply| reply)
    }
}

impl Set {
    /// `SET`'s options, left to right; `command` names it in errors.
    fn parse(
        key: &Bytes,
        value: &Bytes,
        options: &[Bytes],
        command: &str,
        now_ms: i64,
    ) -> Result<Self, Reply> {
        let mut set = Set {
            key: key.clone(),
            value: value.clone(),
            condition: None,
            get: false,
            expiry: SetExpiry::Never,
        };
        let mut i = 0;
        while i < options.len() {
            let o = &options[i];
            if eq(o, "NX") && set.condition != Some(Condition::Present) {
                set.condition = Some(Condition::Absent);
            } else if eq(o, "XX") && set.condition != Some(Condition::Absent) {
                set.condition = Some(Condition::Present);
            } else if eq(o, "GET") {
                set.get = true;
            } else if eq(o, "KEEPTTL") && !matches!(set.expiry, SetExpiry::At(_)) {
                set.expiry = SetExpiry::Keep;
            } else if let Some(unit) = DeadlineUnit::parse(o)
                && set.expiry == SetExpiry::Never
                && i + 1 < options.len()
            {
                set.expiry = SetExpiry::At(deadline(unit, &options[i + 1], command, now_ms)?);
                i += 1;
            } else {
                return Err(syntax());
            }
            i += 1;
        }
        Ok(set)
    }
}

impl Handler {
    async fn get(&self, key: &Bytes) -> Result<Reply, Reply> {
        match self.read(key).await? {
            None => Ok(Reply::Nil),
            Some(Value::String { value: v, .. }) => Ok(Reply::Bulk(v)),
            Some(Value::Hash(_) | Value::Set(_)) => Err(wrong_type()),
        }
    }

    async fn set(&self, set: Set) -> Result<Reply, Reply> {
        if set.condition.is_some() || set.get {
            return self.set_atomically(set).await;
        }
        let Set {
            key, value, expiry, ..
        } = set;
        let expiry = match expiry {
            SetExpiry::At(at) => Expiry::at_ms(u64::try_from(at).unwrap_or(0)),
            SetExpiry::Keep => match self.read(&key).await? {
                Some(Value::String { deadline_ms, .. }) => {
                    deadline_ms.map_or(Expiry::NEVER, Expiry::at_ms)
                }
                Some(Value::Hash(data) | Value::Set(data)) => {
                    data.deadline_ms().map_or(Expiry::NEVER, Expiry::at_ms)
                }
                None => Expiry::NEVER,
            },
            SetExpiry::Never => Expiry::NEVER,
        };
        self.node
            .put(key, [(Bytes::from_static(STRING_FIELD), value)], expiry)
            .await
            .map_err(|e| failed(&e))?;
        Ok(Reply::Ok)
    }

    /// `SET` with `NX`, `XX` or `GET`: one consensus operation, so that of
    /// two `SET NX` of one key on two nodes at once exactly one writes.
    async fn set_atomically(&self, set: Set) -> Result<Reply, Reply> {
        let Set {
            key,
            value,
            condition,
            get,
            expiry,
        } = set;
        let mut when = Vec::new();
        if get {
            // GET on a hash is WRONGTYPE, and writes nothing.
            when.push(string_or_absent());
        }
        match condition {
            Some(Condition::Absent) => when.push(sessmesh::Condition::Absent),
            Some(Condition::Present) => when.push(sessmesh::Condition::Present),
            None => {}
        }
        let string = Bytes::from_static(STRING_FIELD);
        let write = match expiry {
            SetExpiry::At(at) => Write::Put {
                fields: vec![(string, value)],
                expiry: Expiry::at_ms(u64::try_from(at).unwrap_or(0)),
            },
            SetExpiry::Never => Write::Put {
                fields: vec![(string, value)],
                expiry: Expiry::NEVER,
            },
            // A string's one field set in place keeps its deadline (a
            // hash under the key is left alone: the write does not apply).
            SetExpiry::Keep => {
                when.push(string_or_absent());
                Write::PutField {
                    name: string,
                    value,
                }
            }
        };
        let op = Cas::Write {
            when: sessmesh::Condition::All(when),
            write,
        };
        let decision = self.decide(&key, op, "value").await?;
        let old = match Self::before(&key, &decision) {
            Some(Value::String { value, .. }) => Some(value),
            Some(Value::Hash(_)) if get => return Err(wrong_type()),
            _ => None,
        };
        Ok(match (get, decision.applied) {
            (true, _) => old.map_or(Reply::Nil, Reply::Bulk),
            (false, true) => Reply::Ok,
            (false, false) => Reply::Nil,
        })
    }

    async fn setnx(&self, key: Bytes, value: Bytes) -> Result<Reply, Reply> {
        let op = Cas::Write {
            when: sessmesh::Condition::Absent,
            write: Write::Put {
                fields: vec![(Bytes::from_static(STRING_FIELD), value)],
                expiry: Expiry::NEVER,
            },
        };
        let decision = self.decide(&key, op, "value").await?;
        Ok(Reply::Int(i64::from(decision.applied)))
    }

    async fn getdel(&self, key: &Bytes) -> Result<Reply, Reply> {
        let op = Cas::Write {
            when: sessmesh::Condition::All(vec![sessmesh::Condition::Present, string_or_absent()]),
            write: Write::Delete,
        };
        let decision = self.decide(key, op, "value").await?;
        match Self::before(key, &decision) {
            None => Ok(Reply::Nil),
            Some(Value::Hash(_) | Value::Set(_)) => Err(wrong_type()),
            Some(Value::String { value, .. }) => Ok(Reply::Bulk(value)),
        }
    }

    async fn incrby(&self, key: &Bytes, by: i64) -> Result<Reply, Reply> {
        let op = Cas::Increment {
            field: Bytes::from_static(STRING_FIELD),
            by,
            when: string_or_absent(),
        };
        let decision = self.decide(key, op, "value").await?;
        if !decision.applied {
            return Err(wrong_type());
        }
        Ok(Reply::Int(Self::written_int(&decision)?))
    }

    async fn incrbyfloat(&self, key: &Bytes, by: f64) -> Result<Reply, Reply> {
        let op = Cas::IncrementFloat {
            field: Bytes::from_static(STRING_FIELD),
            by,
            when: string_or_absent(),
        };
        let decision = self.decide(key, op, "value").await?;
        if !decision.applied {
            return Err(wrong_type());
        }
        Self::written(&decision)
            .cloned()
            .map(Reply::Bulk)
            .ok_or_else(|| err("ERR the increment wrote no number"))
    }

    async fn getex(&self, key: &Bytes, change: Option<NewExpiry>) -> Result<Reply, Reply> {
        let value = match self.read(key).await? {
            None => return Ok(Reply::Nil),
            Some(Value::Hash(_) | Value::Set(_)) => return Err(wrong_type()),
            Some(Value::String { value: v, .. }) => v,
        };
        match change {
            None => {}
            Some(NewExpiry::Persist) => self.clear_expiry(key).await?,
            Some(NewExpiry::At(at)) => {
                self.node
                    .expire_at(key.clone(), Some(at_ms(at)))
                    .await
                    .map_err(|e| failed(&e))?;
            }
        }
        Ok(Reply::Bulk(value))
    }

    async fn mget(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let values = self.read_all(keys).await?;
        Ok(Reply::Array(
            values
                .into_iter()
                .map(|value| match value {
                    Some(Value::String { value: v, .. }) => Reply::Bulk(v),
                    _ => Reply::Nil,
                })
                .collect(),
        ))
    }

    async fn mset(&self, pairs: Vec<(Bytes, Bytes)>) -> Result<Reply, Reply> {
        let writes = pairs.into_iter().map(|(key, value)| {
            let write = Write::Put {
                fields: vec![(Bytes::from_static(STRING_FIELD), value)],
                expiry: Expiry::NEVER,
            };
            (key, write)
        });
        self.write_all(writes).await?;
        Ok(Reply::Ok)
    }

    /// `MSETNX`: every key is created, each by consensus (`SET NX`), in
    /// order; if one is taken, those it created are deleted again (each
    /// only while it still holds what this wrote) and nothing is left.
    /// All or nothing in the end, but not isolated: a reader may see the
    /// first keys in the moment before they are taken back.
    async fn msetnx(&self, pairs: Vec<(Bytes, Bytes)>) -> Result<Reply, Reply> {
        // A key named twice holds its last value.
        let mut last: Vec<(Bytes, Bytes)> = Vec::new();
        for (key, value) in pairs {
            last.retain(|(k, _)| *k != key);
            last.push((key, value));
        }
        let mut created = Vec::new();
        let mut outcome = Ok(Reply::Int(1));
        for (key, value) in last {
            let op = Cas::Write {
                when: sessmesh::Condition::Absent,
                write: Write::Put {
                    fields: vec![(Bytes::from_static(STRING_FIELD), value)],
                    expiry: Expiry::NEVER,
                },
            };
            match self.decide(&key, op, "value").await {
                Ok(decision) => match decision.written {
                    Some((_, stamp)) if decision.applied => created.push((key, stamp)),
                    _ => {
                        outcome = Ok(Reply::Int(0));
                        break;
                    }
                },
                Err(reply) => {
                    outcome = Err(reply);
                    break;
                }
            }
        }
        if outcome != Ok(Reply::Int(1)) {
            for (key, stamp) in created {
                let undo = Computation::new(move |session, _| {
                    let unchanged = session.is_some_and(|s| s.newest_stamp() == stamp);
                    Ok(unchanged.then_some(Write::Delete))
                });
                if let Err(reply) = self.decide(&key, Cas::Compute(undo), "value").await {
                    outcome = outcome.and(Err(reply));
                }
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{NOW_MS, b, parse};
    use super::*;

    fn set(request: &str) -> Set {
        match parse(request) {
            Ok(Call::Strings(StringCommand::Set(set))) => set,
            other => panic!("{request}: {other:?}"),
        }
    }

    #[test]
    fn set_options_become_typed_fields() {
        let plain = set("SET k v");
        assert_eq!(
            plain,
            Set {
                key: b("k"),
                value: b("v"),
                condition: None,
                get: false,
                expiry: SetExpiry::Never,
            }
        );
        let full = set("set k v nx GET px 1500");
        assert_eq!(full.condition, Some(Condition::Absent));
        assert!(full.get);
        assert_eq!(full.expiry, SetExpiry::At(NOW_MS + 1500));
        assert_eq!(set("SET k v XX KEEPTTL").expiry, SetExpiry::Keep);
        assert_eq!(set("SET k v EXAT 2").expiry, SetExpiry::At(2000));
        // SETEX and PSETEX are the SET they stand for.
        assert_eq!(set("SETEX k 2 v"), set("SET k v EX 2"));
        assert_eq!(set("PSETEX k 2 v"), set("SET k v PX 2"));
    }

    #[test]
    fn other_string_commands_parse() {
        assert_eq!(
            parse("GETEX k PERSIST"),
            Ok(Call::Strings(StringCommand::GetEx {
                key: b("k"),
                change: Some(NewExpiry::Persist),
            }))
        );
        assert_eq!(
            parse("GETEX k EX 1"),
            Ok(Call::Strings(StringCommand::GetEx {
                key: b("k"),
                change: Some(NewExpiry::At(NOW_MS + 1000)),
            }))
        );
        assert_eq!(
            parse("MSET a 1 b 2"),
            Ok(Call::Strings(StringCommand::MSet {
                pairs: vec![(b("a"), b("1")), (b("b"), b("2"))],
            }))
        );
    }
}
