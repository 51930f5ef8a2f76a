//! Hashes: a session's fields (`HSET`, `HGET`, `HDEL`, `HINCRBY`, ...).
//! `HSETNX`, `HINCRBY` and `HINCRBYFLOAT` are atomic across the cluster
//! (see `atomic.rs`).

use sessmesh::{Cas, Condition};

use super::atomic::hash_or_absent;
use super::*;

/// The hash commands, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Del,
    Exists,
    Get,
    GetAll,
    IncrBy,
    IncrByFloat,
    Keys,
    Len,
    MGet,
    MSet,
    Set,
    RandField,
    SetNx,
    StrLen,
    Vals,
}

/// A hash command, its arguments parsed. No field name is empty: that
/// name holds a string.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum HashCommand {
    /// `HSET key field value [field value ...]`, and `HMSET` (`replies_ok`).
    Set {
        key: Bytes,
        pairs: Vec<(Bytes, Bytes)>,
        /// `HMSET`: reply `OK`, not the count of new fields.
        replies_ok: bool,
    },
    /// `HSETNX key field value`.
    SetNx {
        key: Bytes,
        field: Bytes,
        value: Bytes,
    },
    /// `HGET key field`.
    Get { key: Bytes, field: Bytes },
    /// `HSTRLEN key field`.
    StrLen { key: Bytes, field: Bytes },
    /// `HRANDFIELD key [count [WITHVALUES]]`.
    RandField {
        key: Bytes,
        /// `None`: one field, answered alone.
        count: Option<i64>,
        with_values: bool,
    },
    /// `HMGET key field [field ...]`.
    MGet { key: Bytes, fields: Vec<Bytes> },
    /// `HGETALL`, `HKEYS`, `HVALS`, `HLEN`: `key`.
    Whole { key: Bytes, part: Part },
    /// `HDEL key field [field ...]`.
    Del { key: Bytes, fields: Vec<Bytes> },
    /// `HEXISTS key field`.
    Exists { key: Bytes, field: Bytes },
    /// `HINCRBY key field increment`.
    IncrBy { key: Bytes, field: Bytes, by: i64 },
    /// `HINCRBYFLOAT key field increment`.
    IncrByFloat { key: Bytes, field: Bytes, by: f64 },
}

/// What a command that reads a whole hash replies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Part {
    /// `HGETALL`: names and values.
    All,
    /// `HKEYS`: the names.
    Names,
    /// `HVALS`: the values.
    Values,
    /// `HLEN`: how many fields.
    Count,
}

fn empty_field() -> Reply {
    err("ERR empty hash field names are not supported")
}

fn reserved_field() -> Reply {
    err("ERR hash field names that begin with a zero byte are not supported")
}

/// `field`, unless it is the empty name, which holds a string, or begins
/// with the zero byte set members' names begin with.
fn field_name(field: &Bytes) -> Result<Bytes, Reply> {
    if field.as_ref() == STRING_FIELD {
        Err(empty_field())
    } else if field.starts_with(SET_PREFIX) {
        Err(reserved_field())
    } else {
        Ok(field.clone())
    }
}

impl HashCommand {
    /// Parses the arguments after the name, their number already checked.
    pub(super) fn parse(op: Op, args: &[Bytes]) -> Result<Self, Reply> {
        let key = args[0].clone();
        Ok(match op {
            Op::Set | Op::MSet => {
                let pairs = &args[1..];
                if !pairs.len().is_multiple_of(2) {
                    return Err(arity(if op == Op::Set { "hset" } else { "hmset" }));
                }
                if pairs.chunks(2).any(|p| p[0].starts_with(SET_PREFIX)) {
                    return Err(reserved_field());
                }
                if pairs.chunks(2).any(|p| p[0].as_ref() == STRING_FIELD) {
                    return Err(empty_field());
                }
                HashCommand::Set {
                    key,
                    pairs: pairs
                        .chunks(2)
                        .map(|pair| (pair[0].clone(), pair[1].clone()))
                        .collect(),
                    replies_ok: op == Op::MSet,
                }
            }
            Op::SetNx => HashCommand::SetNx {
                key,
                field: field_name(&args[1])?,
                value: args[2].clone(),
            },
            Op::Get => HashCommand::Get {
                key,
                field: args[1].clone(),
            },
            Op::StrLen => HashCommand::StrLen {
                key,
                field: args[1].clone(),
            },
            Op::RandField => {
                let count = match args.get(1) {
                    None => None,
                    Some(n) => Some(int(n).ok_or_else(not_integer)?),
                };
                let with_values = match args.get(2) {
                    None => false,
                    Some(o) if eq(o, "WITHVALUES") && args.len() == 3 => true,
                    Some(_) => return Err(syntax()),
                };
                HashCommand::RandField {
                    key,
                    count,
                    with_values,
                }
            }
            Op::MGet => HashCommand::MGet {
                key,
                fields: args[1..].to_vec(),
            },
            Op::GetAll => HashCommand::Whole {
                key,
                part: Part::All,
            },
            Op::Keys => HashCommand::Whole {
                key,
                part: Part::Names,
            },
            Op::Vals => HashCommand::Whole {
                key,
                part: Part::Values,
            },
            Op::Len => HashCommand::Whole {
                key,
                part: Part::Count,
            },
            Op::Del => HashCommand::Del {
                key,
                fields: args[1..].to_vec(),
            },
            Op::Exists => HashCommand::Exists {
                key,
                field: args[1].clone(),
            },
            Op::IncrBy => {
                let by = int(&args[2]).ok_or_else(not_integer)?;
                HashCommand::IncrBy {
                    key,
                    field: field_name(&args[1])?,
                    by,
                }
            }
            Op::IncrByFloat => {
                let by = float(&args[2]).ok_or_else(|| err("ERR value is not a valid float"))?;
                HashCommand::IncrByFloat {
                    key,
                    field: field_name(&args[1])?,
                    by,
                }
            }
        })
    }

    pub(super) async fn run(self, handler: &Handler) -> Reply {
        let result = match self {
            HashCommand::Set {
                key,
                pairs,
                replies_ok,
            } => handler.hset(key, pairs, replies_ok).await,
            HashCommand::SetNx { key, field, value } => handler.hsetnx(key, field, value).await,
            HashCommand::Get { key, field } => handler.hget(&key, &field).await,
            HashCommand::StrLen { key, field } => handler.hstrlen(&key, &field).await,
            HashCommand::RandField {
                key,
                count,
                with_values,
            } => handler.hrandfield(&key, count, with_values).await,
            HashCommand::MGet { key, fields } => handler.hmget(&key, &fields).await,
            HashCommand::Whole { key, part } => handler.hread(&key, part).await,
            HashCommand::Del { key, fields } => handler.hdel(key, fields).await,
            HashCommand::Exists { key, field } => handler.hexists(&key, &field).await,
            HashCommand::IncrBy { key, field, by } => handler.hincrby(key, field, by).await,
            HashCommand::IncrByFloat { key, field, by } => {
                handler.hincrbyfloat(key, field, by).await
            }
        };
        result.unwrap_or_else(|reply| reply)
    }
}

impl Handler {
    async fn hset(
        &self,
        key: Bytes,
        pairs: Vec<(Bytes, Bytes)>,
        replies_ok: bool,
    ) -> Result<Reply, Reply> {
        let existing = self.glance_hash(&key).await?;
        let mut seen = std::collections::HashSet::new();
        let added = pairs
            .iter()
            .filter(|(field, _)| seen.insert(field))
            .filter(|(field, _)| existing.as_ref().and_then(|d| d.field(field)).is_none())
            .count();
        let writes = pairs.into_iter().map(|(name, value)| {
            let write = Write::PutField { name, value };
            (key.clone(), write)
        });
        self.write_all(writes).await?;
        let added = i64::try_from(added).unwrap_or(i64::MAX);
        Ok(if replies_ok {
            Reply::Ok
        } else {
            Reply::Int(added)
        })
    }

    async fn hsetnx(&self, key: Bytes, field: Bytes, value: Bytes) -> Result<Reply, Reply> {
        let when = Condition::All(vec![
            hash_or_absent(),
            Condition::Field {
                name: field.clone(),
                value: None,
            },
        ]);
        let op = Cas::Write {
            when,
            write: Write::PutField { name: field, value },
        };
        let decision = self.decide(&key, op, "hash value").await?;
        if let Some(Value::String { .. } | Value::Set(_)) = Self::before(&key, &decision) {
            return Err(wrong_type());
        }
        Ok(Reply::Int(i64::from(decision.applied)))
    }

    async fn hget(&self, key: &Bytes, field: &Bytes) -> Result<Reply, Reply> {
        Ok(self
            .read_hash(key)
            .await?
            .and_then(|d| d.field(field).map(Reply::bulk))
            .unwrap_or(Reply::Nil))
    }

    /// `HRANDFIELD`: a positive count gives that many distinct fields (at
    /// most all), a negative one that many picks that may repeat.
    async fn hrandfield(
        &self,
        key: &Bytes,
        count: Option<i64>,
        with_values: bool,
    ) -> Result<Reply, Reply> {
        let data = self.read_hash(key).await?;
        let fields: Vec<(Bytes, Bytes)> = data
            .as_ref()
            .map(|d| {
                d.fields()
                    .map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)))
                    .collect()
            })
            .unwrap_or_default();
        let mut random = Random::new();
        let Some(count) = count else {
            return Ok(match fields.is_empty() {
                true => Reply::Nil,
                false => Reply::Bulk(fields[random.below(fields.len())].0.clone()),
            });
        };
        let picks: Vec<&(Bytes, Bytes)> = if fields.is_empty() {
            Vec::new()
        } else if count >= 0 {
            let mut order: Vec<&(Bytes, Bytes)> = fields.iter().collect();
            for i in (1..order.len()).rev() {
                order.swap(i, random.below(i + 1));
            }
            order.truncate(usize::try_from(count).unwrap_or(usize::MAX));
            order
        } else {
            (0..count.unsigned_abs())
                .map(|_| &fields[random.below(fields.len())])
                .collect()
        };
        Ok(Reply::Array(
            picks
                .into_iter()
                .flat_map(|(n, v)| {
                    let value = with_values.then(|| Reply::Bulk(v.clone()));
                    std::iter::once(Reply::Bulk(n.clone())).chain(value)
                })
                .collect(),
        ))
    }

    async fn hstrlen(&self, key: &Bytes, field: &Bytes) -> Result<Reply, Reply> {
        let len = self
            .read_hash(key)
            .await?
            .and_then(|d| d.field(field).map(<[u8]>::len))
            .unwrap_or(0);
        Ok(Reply::Int(i64::try_from(len).unwrap_or(i64::MAX)))
    }

    async fn hmget(&self, key: &Bytes, fields: &[Bytes]) -> Result<Reply, Reply> {
        let data = self.read_hash(key).await?;
        Ok(Reply::Array(
            fields
                .iter()
                .map(|f| {
                    data.as_ref()
                        .and_then(|d| d.field(f).map(Reply::bulk))
                        .unwrap_or(Reply::Nil)
                })
                .collect(),
        ))
    }

    async fn hread(&self, key: &Bytes, part: Part) -> Result<Reply, Reply> {
        let data = self.read_hash(key).await?;
        let fields: Vec<(&[u8], &[u8])> = data
            .as_ref()
            .map(|d| d.fields().collect())
            .unwrap_or_default();
        Ok(match part {
            Part::Count => Reply::Int(i64::try_from(fields.len()).unwrap_or(i64::MAX)),
            Part::Names => Reply::Array(fields.iter().map(|(n, _)| Reply::bulk(n)).collect()),
            Part::Values => Reply::Array(fields.iter().map(|(_, v)| Reply::bulk(v)).collect()),
            Part::All => Reply::Map(
                fields
                    .iter()
                    .map(|(n, v)| (Reply::bulk(n), Reply::bulk(v)))
                    .collect(),
            ),
        })
    }

    /// Deletes every named field, seen or not (as `DEL` does whole
    /// sessions); the count is of the fields the read before saw.
    async fn hdel(&self, key: Bytes, fields: Vec<Bytes>) -> Result<Reply, Reply> {
        let data = self.glance_hash(&key).await?;
        let mut seen = std::collections::HashSet::new();
        let removed = fields
            .iter()
            .filter(|field| seen.insert(*field))
            .filter(|field| data.as_ref().is_some_and(|d| d.field(field).is_some()))
            .count();
        let writes = fields.into_iter().map(|name| {
            let write = Write::DeleteField { name };
            (key.clone(), write)
        });
        self.write_all(writes).await?;
        Ok(Reply::Int(i64::try_from(removed).unwrap_or(i64::MAX)))
    }

    async fn hexists(&self, key: &Bytes, field: &Bytes) -> Result<Reply, Reply> {
        let data = self.read_hash(key).await?;
        Ok(Reply::Int(i64::from(
            data.is_some_and(|d| d.field(field).is_some()),
        )))
    }

    async fn hincrby(&self, key: Bytes, field: Bytes, by: i64) -> Result<Reply, Reply> {
        let op = Cas::Increment {
            field,
            by,
            when: hash_or_absent(),
        };
        let decision = self.decide(&key, op, "hash value").await?;
        if !decision.applied {
            return Err(wrong_type());
        }
        Ok(Reply::Int(Self::written_int(&decision)?))
    }

    async fn hincrbyfloat(&self, key: Bytes, field: Bytes, by: f64) -> Result<Reply, Reply> {
        let op = Cas::IncrementFloat {
            field,
            by,
            when: hash_or_absent(),
        };
        let decision = self.decide(&key, op, "hash value").await?;
        if !decision.applied {
            return Err(wrong_type());
        }
        Self::written(&decision)
            .cloned()
            .map(Reply::Bulk)
            .ok_or_else(|| err("ERR the increment wrote no number"))
    }
}

/// Random numbers for `HRANDFIELD`, seeded by the process's hasher keys
/// and a counter: no two calls draw the same sequence.
struct Random(u64);

impl Random {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
        Random(hasher.finish() | 1)
    }

    /// A number below `n` (xorshift64*).
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        usize::try_from(x % u64::try_from(n.max(1)).unwrap_or(u64::MAX)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{b, parse};
    use super::*;

    #[test]
    fn hash_commands_parse() {
        assert_eq!(
            parse("HMSET h a 1 b 2"),
            Ok(Call::Hashes(HashCommand::Set {
                key: b("h"),
                pairs: vec![(b("a"), b("1")), (b("b"), b("2"))],
                replies_ok: true,
            }))
        );
        assert_eq!(
            parse("HINCRBY h n -4"),
            Ok(Call::Hashes(HashCommand::IncrBy {
                key: b("h"),
                field: b("n"),
                by: -4,
            }))
        );
        assert_eq!(
            parse("HVALS h"),
            Ok(Call::Hashes(HashCommand::Whole {
                key: b("h"),
                part: Part::Values,
            }))
        );
    }
}
