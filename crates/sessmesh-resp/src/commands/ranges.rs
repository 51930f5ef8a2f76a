//! Parts of strings: `APPEND`, `STRLEN`, `GETRANGE` (and its old name
//! `SUBSTR`), `SETRANGE`. `APPEND` and `SETRANGE` change a value by what
//! it holds, so each is one consensus operation among the key's replicas
//! (see `atomic.rs`): two appends on two nodes at once both land, one
//! after the other.

use sessmesh::{Cas, CasError, Computation};

use super::*;

/// The largest string `SETRANGE` may make, as in Redis: 512 MB.
const MAX_STRING: usize = 512 * 1024 * 1024;

/// The range commands, as the table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Append,
    GetRange,
    SetRange,
    StrLen,
}

/// A range command, its arguments parsed.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum RangeCommand {
    /// `APPEND key value`.
    Append { key: Bytes, value: Bytes },
    /// `STRLEN key`.
    StrLen { key: Bytes },
    /// `GETRANGE key start end`: inclusive, negative from the end.
    GetRange { key: Bytes, start: i64, end: i64 },
    /// `SETRANGE key offset value`.
    SetRange {
        key: Bytes,
        offset: usize,
        value: Bytes,
    },
}

impl RangeCommand {
    pub(super) fn parse(op: Op, args: &[Bytes]) -> Result<Self, Reply> {
        let key = args[0].clone();
        Ok(match op {
            Op::Append => RangeCommand::Append {
                key,
                value: args[1].clone(),
            },
            Op::StrLen => RangeCommand::StrLen { key },
            Op::GetRange => RangeCommand::GetRange {
                key,
                start: int(&args[1]).ok_or_else(not_integer)?,
                end: int(&args[2]).ok_or_else(not_integer)?,
            },
            Op::SetRange => {
                let offset = int(&args[1]).ok_or_else(not_integer)?;
                let offset = usize::try_from(offset)
                    .ok()
                    .filter(|o| o.saturating_add(args[2].len()) <= MAX_STRING)
                    .ok_or_else(|| err("ERR offset is out of range"))?;
                RangeCommand::SetRange {
                    key,
                    offset,
                    value: args[2].clone(),
                }
            }
        })
    }

    pub(super) async fn run(self, handler: &Handler) -> Reply {
        let result = match self {
            RangeCommand::Append { key, value } => handler.edit(&key, None, value).await,
            RangeCommand::SetRange { key, offset, value } => {
                handler.edit(&key, Some(offset), value).await
            }
            RangeCommand::StrLen { key } => handler
                .string_of(&key)
                .await
                .map(|v| Reply::Int(i64::try_from(v.len()).unwrap_or(i64::MAX))),
            RangeCommand::GetRange { key, start, end } => handler
                .string_of(&key)
                .await
                .map(|v| Reply::Bulk(v.slice(range(v.len(), start, end)))),
        };
        result.unwrap_or_else(|reply| reply)
    }
}

/// The bytes `GETRANGE start end` takes of a string of `len` bytes, as
/// Redis counts: inclusive, negative indices from the end, clamped.
pub(super) fn range(len: usize, start: i64, end: i64) -> std::ops::Range<usize> {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let at = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (at(start), at(end).min(len - 1));
    if len == 0 || start > end {
        return 0..0;
    }
    let (start, end) = (usize::try_from(start), usize::try_from(end));
    match (start, end) {
        (Ok(start), Ok(end)) => start..end + 1,
        _ => 0..0,
    }
}

/// The string a key's state holds, empty when absent; `WRONGTYPE` for a
/// hash.
fn string_in(session: Option<&sessmesh::Session>, now_ms: u64) -> Result<Vec<u8>, CasError> {
    let Some(mut fields) = session.and_then(|s| s.visible_fields(now_ms)) else {
        return Ok(Vec::new());
    };
    match (fields.next(), fields.next()) {
        (None, _) => Ok(Vec::new()),
        (Some((name, value)), None) if name.as_ref() == STRING_FIELD => Ok(value.to_vec()),
        _ => Err(CasError::Refused(
            "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
        )),
    }
}

impl Handler {
    /// The string under `key`, empty when there is none.
    async fn string_of(&self, key: &Bytes) -> Result<Bytes, Reply> {
        match self.read(key).await? {
            None => Ok(Bytes::new()),
            Some(Value::String { value, .. }) => Ok(value),
            Some(Value::Hash(_) | Value::Set(_)) => Err(wrong_type()),
        }
    }

    /// `APPEND` (`offset` `None`) or `SETRANGE`: one consensus operation
    /// that writes the string changed by what it held; the reply is the new
    /// length. The key keeps its expiry; `SETRANGE` of nothing onto no key
    /// writes nothing.
    async fn edit(&self, key: &Bytes, offset: Option<usize>, value: Bytes) -> Result<Reply, Reply> {
        let computation = Computation::new(move |current, now_ms| {
            let mut string = string_in(current, now_ms)?;
            let at = offset.unwrap_or(string.len());
            if value.is_empty() && (offset.is_none() || string.is_empty()) {
                return Ok(None);
            }
            if string.len() < at + value.len() {
                string.resize(at + value.len(), 0);
            }
            string[at..at + value.len()].copy_from_slice(&value);
            Ok(Some(Write::PutField {
                name: Bytes::from_static(STRING_FIELD),
                value: Bytes::from(string),
            }))
        });
        let decision = self.decide(key, Cas::Compute(computation), "value").await?;
        let len = match Self::written(&decision) {
            Some(written) => written.len(),
            // Nothing written: the length it had.
            None => match Self::before(key, &decision) {
                Some(Value::String { value, .. }) => value.len(),
                _ => 0,
            },
        };
        Ok(Reply::Int(i64::try_from(len).unwrap_or(i64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrange_counts_as_redis_does() {
        let hello = b"Hello World";
        let take = |start, end| &hello[range(hello.len(), start, end)];
        assert_eq!(take(0, 3), b"Hell");
        assert_eq!(take(-3, -1), b"rld");
        assert_eq!(take(0, -1), hello);
        assert_eq!(take(10, 100), b"d");
        assert_eq!(take(5, 3), b"");
        assert_eq!(take(-100, 1), b"He");
        assert_eq!(take(20, 30), b"");
        assert_eq!(&b""[range(0, 0, -1)], b"");
    }
}
