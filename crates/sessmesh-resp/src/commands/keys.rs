//! Keys and expiry: `DEL`, `UNLINK`, `EXISTS`, `TYPE`, `EXPIRE` and its
//! kin, `TTL`, `PTTL`, `PERSIST`, `SCAN`.

use super::*;

/// The key commands, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Del,
    Exists,
    Expire,
    ExpireAt,
    PExpire,
    PExpireAt,
    Persist,
    PTtl,
    Keys,
    Object,
    RandomKey,
    Scan,
    Touch,
    Ttl,
    Type,
    Unlink,
}

/// A key command, its arguments parsed.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum KeyCommand {
    /// `DEL key [key ...]`, and `UNLINK`, which is the same here.
    Del { keys: Vec<Bytes> },
    /// `EXISTS key [key ...]`.
    Exists { keys: Vec<Bytes> },
    /// `TYPE key`.
    Type { key: Bytes },
    /// `OBJECT ENCODING key`: how Redis would store the value.
    Encoding { key: Bytes },
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`: `key n [NX|XX|GT|LT]`.
    Expire {
        key: Bytes,
        /// The new deadline, in Unix milliseconds; one already past
        /// deletes the key.
        at_ms: i64,
        only_if: ExpireIf,
    },
    /// `TTL key`, and `PTTL` (`in_ms`).
    Ttl { key: Bytes, in_ms: bool },
    /// `PERSIST key`.
    Persist { key: Bytes },
    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]`.
    Scan(Scan),
    /// `KEYS pattern`, in the client's database.
    Keys { pattern: Bytes, db: u32 },
    /// `RANDOMKEY`, in the client's database.
    RandomKey { db: u32 },
}

/// When an `EXPIRE` applies, from its options: with none, always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ExpireIf {
    /// `NX`: only if the key has no deadline.
    no_deadline: bool,
    /// `XX`: only if the key has a deadline.
    has_deadline: bool,
    /// `GT`: only if the new deadline is later (and the key has one).
    later: bool,
    /// `LT`: only if the new deadline is sooner (or the key has none).
    sooner: bool,
}

/// `SCAN`'s arguments.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Scan {
    /// The first partition to list.
    pub(super) cursor: u64,
    /// `MATCH`: a glob keys must match.
    pub(super) pattern: Option<Bytes>,
    /// `COUNT`: list partitions until at least this many keys.
    pub(super) count: usize,
    /// `TYPE`, lower-cased.
    pub(super) kind: Option<Vec<u8>>,
    /// The client's database: only its keys are listed.
    pub(super) db: u32,
}

impl KeyCommand {
    /// Parses the arguments after the name, their number already checked;
    /// relative deadlines count from `now_ms`.
    pub(super) fn parse(op: Op, args: &[Bytes], now_ms: i64, db: u32) -> Result<Self, Reply> {
        Ok(match op {
            Op::Del | Op::Unlink => KeyCommand::Del {
                keys: args.to_vec(),
            },
            // `TOUCH` counts the keys that exist, as `EXISTS`, whose read
            // counts as a use for the eviction policy.
            Op::Exists | Op::Touch => KeyCommand::Exists {
                keys: args.to_vec(),
            },
            Op::Object if eq(&args[0], "ENCODING") && args.len() == 2 => KeyCommand::Encoding {
                key: args[1].clone(),
            },
            Op::Object if eq(&args[0], "ENCODING") => return Err(arity("object|encoding")),
            Op::Object => {
                return Err(Reply::Error(format!(
                    "ERR unknown subcommand '{}'. Try OBJECT HELP.",
                    String::from_utf8_lossy(&args[0])
                )));
            }
            Op::Type => KeyCommand::Type {
                key: args[0].clone(),
            },
            Op::Expire | Op::PExpire | Op::ExpireAt | Op::PExpireAt => {
                Self::parse_expire(op, args, now_ms)?
            }
            Op::Ttl | Op::PTtl => KeyCommand::Ttl {
                key: args[0].clone(),
                in_ms: op == Op::PTtl,
            },
            Op::Persist => KeyCommand::Persist {
                key: args[0].clone(),
            },
            Op::Scan => KeyCommand::Scan(Scan::parse(args, db)?),
            Op::Keys => KeyCommand::Keys {
                pattern: args[0].clone(),
                db,
            },
            Op::RandomKey => KeyCommand::RandomKey { db },
        })
    }

    fn parse_expire(op: Op, args: &[Bytes], now_ms: i64) -> Result<Self, Reply> {
        let (unit, command) = match op {
            Op::Expire => (DeadlineUnit::Seconds, "expire"),
            Op::PExpire => (DeadlineUnit::Millis, "pexpire"),
            Op::ExpireAt => (DeadlineUnit::UnixSeconds, "expireat"),
            _ => (DeadlineUnit::UnixMillis, "pexpireat"),
        };
        let n = int(&args[1]).ok_or_else(not_integer)?;
        let at_ms = unit
            .deadline_ms(n, now_ms)
            .ok_or_else(|| invalid_expire(command))?;
        let mut only_if = ExpireIf::default();
        for o in &args[2..] {
            if eq(o, "NX") {
                only_if.no_deadline = true;
            } else if eq(o, "XX") {
                only_if.has_deadline = true;
            } else if eq(o, "GT") {
                only_if.later = true;
            } else if eq(o, "LT") {
                only_if.sooner = true;
            } else {
                return Err(Reply::Error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(o)
                )));
            }
        }
        if only_if.no_deadline && (only_if.has_deadline || only_if.later || only_if.sooner) {
            return Err(err(
                "ERR NX and XX, GT or LT options at the same time are not compatible",
            ));
        }
        if only_if.later && only_if.sooner {
            return Err(err(
                "ERR GT and LT options at the same time are not compatible",
            ));
        }
        Ok(KeyCommand::Expire {
            key: args[0].clone(),
            at_ms,
            only_if,
        })
    }

    pub(super) async fn run(self, handler: &Handler) -> Reply {
        let result = match self {
            KeyCommand::Del { keys } => handler.del(&keys).await,
            KeyCommand::Exists { keys } => handler.exists(&keys).await,
            KeyCommand::Type { key } => handler.type_of(&key).await,
            KeyCommand::Encoding { key } => handler.encoding(&key).await,
            KeyCommand::Expire {
                key,
                at_ms,
                only_if,
            } => handler.expire(&key, at_ms, only_if).await,
            KeyCommand::Ttl { key, in_ms } => handler.ttl(&key, in_ms).await,
            KeyCommand::Persist { key } => handler.persist(&key).await,
            KeyCommand::Scan(scan) => handler.scan(scan).await,
            KeyCommand::Keys { pattern, db } => handler.keys(&pattern, db).await,
            KeyCommand::RandomKey { db } => handler.random_key(db).await,
        };
        result.unwrap_or_else(|reply| reply)
    }
}

impl ExpireIf {
    /// Whether a key whose deadline is `current` takes the deadline `at`.
    pub(super) fn allows(self, current: Option<i64>, at: i64) -> bool {
        match current {
            None => !self.has_deadline && !self.later,
            Some(c) => !self.no_deadline && (!self.later || at > c) && (!self.sooner || at < c),
        }
    }
}

impl Scan {
    fn parse(args: &[Bytes], db: u32) -> Result<Self, Reply> {
        let Some(cursor) = std::str::from_utf8(&args[0])
            .ok()
            .and_then(|c| c.parse::<u64>().ok())
        else {
            return Err(err("ERR invalid cursor"));
        };
        let mut scan = Scan {
            cursor,
            pattern: None,
            count: 10,
            kind: None,
            db,
        };
        for option in args[1..].chunks(2) {
            match option {
                [o, v] if eq(o, "MATCH") => scan.pattern = Some(v.clone()),
                [o, v] if eq(o, "COUNT") => match int(v) {
                    Some(n) if n >= 1 => scan.count = usize::try_from(n).unwrap_or(usize::MAX),
                    Some(_) => return Err(syntax()),
                    None => return Err(not_integer()),
                },
                [o, v] if eq(o, "TYPE") => scan.kind = Some(v.to_ascii_lowercase()),
                _ => return Err(syntax()),
            }
        }
        Ok(scan)
    }
}

impl Handler {
    pub(super) async fn clear_expiry(&self, key: &Bytes) -> Result<(), Reply> {
        self.node
            .expire_at(key.clone(), None)
            .await
            .map_err(|e| failed(&e))?;
        self.node
            .set_max_idle(key.clone(), None)
            .await
            .map_err(|e| failed(&e))
    }

    /// Deletes every key, seen or not: a logout through a node that never
    /// saw the session (it was created across a partition) must still hold
    /// once the partition heals. The keys are deleted together, and one
    /// that fails (the delete is kept all the same) does not stop the
    /// others. The count is of the keys the deletes' reads saw.
    async fn del(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let deletes = keys.iter().map(|key| self.node.delete(key.clone()));
        let mut deleted = 0;
        for outcome in join_all(deletes).await {
            deleted += i64::from(outcome.map_err(|e| failed(&e))?);
        }
        Ok(Reply::Int(deleted))
    }

    async fn exists(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let values = self.read_all(keys).await?;
        Ok(Reply::Int(
            i64::try_from(values.iter().filter(|v| v.is_some()).count()).unwrap_or(i64::MAX),
        ))
    }

    async fn type_of(&self, key: &Bytes) -> Result<Reply, Reply> {
        Ok(Reply::Simple(match self.read(key).await? {
            None => "none",
            Some(Value::String { .. }) => "string",
            Some(Value::Hash(_)) => "hash",
            Some(Value::Set(_)) => "set",
        }))
    }

    /// `OBJECT ENCODING`: the encoding Redis would choose for the value,
    /// for clients that look (an `int` as Redis stores integers, small
    /// hashes as a `listpack`).
    async fn encoding(&self, key: &Bytes) -> Result<Reply, Reply> {
        Ok(match self.read(key).await? {
            None => Reply::Nil,
            Some(Value::String { value, .. }) => Reply::bulk(
                if value.len() <= 20
                    && int(&value).is_some_and(|n| n.to_string().as_bytes() == value.as_ref())
                {
                    "int"
                } else if value.len() <= 44 {
                    "embstr"
                } else {
                    "raw"
                },
            ),
            Some(Value::Set(data)) => {
                let members = members_of(data.fields().map(|(n, _)| n));
                let small = members.len() <= 128 && members.iter().all(|m| m.len() <= 64);
                Reply::bulk(if small { "listpack" } else { "hashtable" })
            }
            Some(Value::Hash(data)) => {
                let small = data.fields().count() <= 128
                    && data.fields().all(|(n, v)| n.len() <= 64 && v.len() <= 64);
                Reply::bulk(if small { "listpack" } else { "hashtable" })
            }
        })
    }

    async fn expire(&self, key: &Bytes, at: i64, only_if: ExpireIf) -> Result<Reply, Reply> {
        let Some(data) = self.node.get(key.clone()).await.map_err(|e| failed(&e))? else {
            return Ok(Reply::Int(0));
        };
        let current = data
            .deadline_ms()
            .map(|d| i64::try_from(d).unwrap_or(i64::MAX));
        if !only_if.allows(current, at) {
            return Ok(Reply::Int(0));
        }
        if at <= now_ms() {
            self.node
                .delete(key.clone())
                .await
                .map_err(|e| failed(&e))?;
        } else {
            self.node
                .expire_at(key.clone(), Some(at_ms(at)))
                .await
                .map_err(|e| failed(&e))?;
        }
        Ok(Reply::Int(1))
    }

    async fn ttl(&self, key: &Bytes, in_ms: bool) -> Result<Reply, Reply> {
        let Some(data) = self.node.get(key.clone()).await.map_err(|e| failed(&e))? else {
            return Ok(Reply::Int(-2));
        };
        let Some(deadline) = data.deadline_ms() else {
            return Ok(Reply::Int(-1));
        };
        let left = (i64::try_from(deadline).unwrap_or(i64::MAX) - now_ms()).max(0);
        Ok(Reply::Int(if in_ms { left } else { (left + 500) / 1000 }))
    }

    async fn persist(&self, key: &Bytes) -> Result<Reply, Reply> {
        let Some(data) = self.node.get(key.clone()).await.map_err(|e| failed(&e))? else {
            return Ok(Reply::Int(0));
        };
        if data.deadline_ms().is_none() {
            return Ok(Reply::Int(0));
        }
        self.clear_expiry(key).await?;
        Ok(Reply::Int(1))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{NOW_MS, b, parse};
    use super::*;

    #[test]
    fn expire_options_become_a_condition() {
        let Ok(Call::Keys(KeyCommand::Expire {
            key,
            at_ms,
            only_if,
        })) = parse("PEXPIRE k 250 xx lt")
        else {
            panic!("not an EXPIRE");
        };
        assert_eq!((key, at_ms), (b("k"), NOW_MS + 250));
        assert!(only_if.has_deadline && only_if.sooner);
        assert!(!only_if.allows(None, 0), "XX needs a deadline");
        assert!(only_if.allows(Some(NOW_MS + 500), NOW_MS + 250));
        assert!(!only_if.allows(Some(NOW_MS), NOW_MS + 250), "LT");
        assert!(ExpireIf::default().allows(None, 0));
        let Ok(Call::Keys(KeyCommand::Expire { at_ms, .. })) = parse("EXPIREAT k -3") else {
            panic!("not an EXPIRE");
        };
        assert_eq!(at_ms, -3000, "a deadline in the past deletes the key");
    }

    #[test]
    fn scan_options_parse() {
        assert_eq!(
            parse("SCAN 3 type HASH match u:* COUNT 5"),
            Ok(Call::Keys(KeyCommand::Scan(Scan {
                cursor: 3,
                pattern: Some(b("u:*")),
                count: 5,
                kind: Some(b"hash".to_vec()),
                db: 0,
            })))
        );
        assert_eq!(
            parse("PTTL k"),
            Ok(Call::Keys(KeyCommand::Ttl {
                key: b("k"),
                in_ms: true,
            }))
        );
    }
}
