//! The commands a script's `redis.call` runs (and those of a transaction
//! that runs all-or-nothing): on the states of its keys as the script read
//! them, held in memory while the script runs (`key_state.rs`). A call goes
//! through the same lookup, key rewrite and parse as a request; only the
//! run differs: here it changes [`KeyStates`], and the script's run ends
//! with the writes that take the keys from the states read to the states
//! left (see `scripts.rs`).
//!
//! The commands a script may call are the data commands of its keys:
//! strings, hashes, sets, and whole keys with their expiry. Others answer
//! an error naming the command.

use sessmesh_core::consensus::format_float;

use super::hashes::Part;
use super::key_state::{KeyStates, Kind};
use super::strings::{Condition as SetCondition, NewExpiry, Set, SetExpiry};
use super::*;

/// Whether `call` is one [`run`] runs: a transaction of such calls on one
/// key runs all-or-nothing.
pub(super) fn supports(call: &Call) -> bool {
    match call {
        Call::Strings(_) => true,
        Call::Keys(command) => matches!(
            command,
            KeyCommand::Del { .. }
                | KeyCommand::Exists { .. }
                | KeyCommand::Type { .. }
                | KeyCommand::Expire { .. }
                | KeyCommand::Ttl { .. }
                | KeyCommand::Persist { .. }
        ),
        Call::Hashes(command) => !matches!(command, HashCommand::RandField { .. }),
        Call::Sets(command) => !matches!(
            command,
            SetCommand::Pop { .. } | SetCommand::Members { scan: Some(_), .. }
        ),
        Call::Ranges(command) => !matches!(command, RangeCommand::SetRange { .. }),
        _ => false,
    }
}

/// Runs a parsed call on `states`, the keys the script may touch.
pub(super) fn run(states: &mut KeyStates, call: Call, now_ms: i64) -> Result<Reply, Reply> {
    match call {
        Call::Strings(command) => strings(states, command, now_ms),
        Call::Keys(command) => keys(states, command, now_ms),
        Call::Hashes(command) => hashes(states, command),
        Call::Sets(command) => sets(states, command),
        Call::Ranges(command) => ranges(states, command),
        _ => Err(err(
            "ERR this command cannot be called from a script on this node",
        )),
    }
}

fn strings(states: &mut KeyStates, command: StringCommand, now_ms: i64) -> Result<Reply, Reply> {
    Ok(match command {
        StringCommand::Get { key } => {
            let state = states.of(&key)?;
            state.string()?.map_or(Reply::Nil, Reply::Bulk)
        }
        StringCommand::Set(Set {
            key,
            value,
            condition,
            get,
            expiry,
        }) => {
            let state = states.of(&key)?;
            let old = if get {
                state.string()?
            } else {
                state.fields.get(STRING_FIELD).cloned()
            };
            let present = !state.fields.is_empty();
            let allowed = match condition {
                None => true,
                Some(SetCondition::Absent) => !present,
                Some(SetCondition::Present) => present,
            };
            if allowed {
                let keep = (state.expires_at, state.max_idle, state.deadline);
                state.set_string(value);
                match expiry {
                    SetExpiry::Never => state.set_deadline(None),
                    SetExpiry::Keep => {
                        (state.expires_at, state.max_idle, state.deadline) = keep;
                    }
                    SetExpiry::At(at) => {
                        state.set_deadline(Some(u64::try_from(at).unwrap_or(0)));
                        if at <= now_ms {
                            state.clear();
                        }
                    }
                }
            }
            match (get, allowed) {
                (true, _) => old.map_or(Reply::Nil, Reply::Bulk),
                (false, true) => Reply::Ok,
                (false, false) => Reply::Nil,
            }
        }
        StringCommand::GetDel { key } => {
            let state = states.of(&key)?;
            let old = state.string()?;
            if old.is_some() {
                state.clear();
            }
            old.map_or(Reply::Nil, Reply::Bulk)
        }
        StringCommand::GetEx { key, change } => {
            let state = states.of(&key)?;
            let old = state.string()?;
            if old.is_some() {
                match change {
                    None => {}
                    Some(NewExpiry::Persist) => state.set_deadline(None),
                    Some(NewExpiry::At(at)) if at <= now_ms => {
                        state.clear();
                    }
                    Some(NewExpiry::At(at)) => state.set_deadline(u64::try_from(at).ok()),
                }
            }
            old.map_or(Reply::Nil, Reply::Bulk)
        }
        StringCommand::MGet { keys } => {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                let state = states.of(&key)?;
                // MGET answers nil, not an error, for a key of another type.
                values.push(match state.kind() {
                    Kind::String => state.string()?.map_or(Reply::Nil, Reply::Bulk),
                    _ => Reply::Nil,
                });
            }
            Reply::Array(values)
        }
        StringCommand::MSetNx { pairs } => {
            for (key, _) in &pairs {
                if !states.of(key)?.fields.is_empty() {
                    return Ok(Reply::Int(0));
                }
            }
            for (key, value) in pairs {
                let state = states.of(&key)?;
                state.set_string(value);
                state.set_deadline(None);
            }
            Reply::Int(1)
        }
        StringCommand::MSet { pairs } => {
            for (key, value) in pairs {
                let state = states.of(&key)?;
                state.set_string(value);
                state.set_deadline(None);
            }
            Reply::Ok
        }
        StringCommand::SetNx { key, value } => {
            let state = states.of(&key)?;
            if state.fields.is_empty() {
                state.set_string(value);
                state.set_deadline(None);
                Reply::Int(1)
            } else {
                Reply::Int(0)
            }
        }
        StringCommand::IncrBy { key, by } => {
            let state = states.of(&key)?;
            let current = match state.string()? {
                None => 0,
                Some(v) => int(&v).ok_or_else(not_integer)?,
            };
            let new = current
                .checked_add(by)
                .ok_or_else(|| err("ERR increment or decrement would overflow"))?;
            let keep = (state.expires_at, state.max_idle, state.deadline);
            state.set_string(Bytes::from(new.to_string()));
            (state.expires_at, state.max_idle, state.deadline) = keep;
            Reply::Int(new)
        }
        StringCommand::IncrByFloat { key, by } => {
            let state = states.of(&key)?;
            let current = match state.string()? {
                None => 0.0,
                Some(v) => float(&v).ok_or_else(|| err("ERR value is not a valid float"))?,
            };
            let new = current + by;
            if !new.is_finite() {
                return Err(err("ERR increment would produce NaN or Infinity"));
            }
            let text = Bytes::from(format_float(new));
            let keep = (state.expires_at, state.max_idle, state.deadline);
            state.set_string(text.clone());
            (state.expires_at, state.max_idle, state.deadline) = keep;
            Reply::Bulk(text)
        }
    })
}

fn keys(states: &mut KeyStates, command: KeyCommand, now_ms: i64) -> Result<Reply, Reply> {
    Ok(match command {
        KeyCommand::Del { keys } => {
            let mut deleted = 0;
            for key in keys {
                let state = states.of(&key)?;
                deleted += i64::from(state.clear());
            }
            Reply::Int(deleted)
        }
        KeyCommand::Exists { keys } => {
            let mut found = 0;
            for key in keys {
                let state = states.of(&key)?;
                found += i64::from(!state.fields.is_empty());
            }
            Reply::Int(found)
        }
        KeyCommand::Type { key } => {
            let state = states.of(&key)?;
            Reply::Simple(match state.kind() {
                Kind::None => "none",
                Kind::String => "string",
                Kind::Hash => "hash",
                Kind::Set => "set",
            })
        }
        KeyCommand::Expire {
            key,
            at_ms,
            only_if,
        } => {
            let state = states.of(&key)?;
            let current = state.deadline.map(|d| i64::try_from(d).unwrap_or(i64::MAX));
            if state.fields.is_empty() || !only_if.allows(current, at_ms) {
                return Ok(Reply::Int(0));
            }
            if at_ms <= now_ms {
                state.clear();
            } else {
                state.set_deadline(u64::try_from(at_ms).ok());
            }
            Reply::Int(1)
        }
        KeyCommand::Ttl { key, in_ms } => {
            let state = states.of(&key)?;
            state.ttl(now_ms, in_ms)
        }
        KeyCommand::Persist { key } => {
            let state = states.of(&key)?;
            if state.fields.is_empty() || state.deadline.is_none() {
                Reply::Int(0)
            } else {
                state.set_deadline(None);
                Reply::Int(1)
            }
        }
        _ => return Err(err("ERR this command cannot be called from a script")),
    })
}

fn hashes(states: &mut KeyStates, command: HashCommand) -> Result<Reply, Reply> {
    Ok(match command {
        HashCommand::Set {
            key,
            pairs,
            replies_ok,
        } => {
            let state = states.of(&key)?;
            state.expect(&[Kind::Hash])?;
            let mut added = 0;
            for (name, value) in pairs {
                added += i64::from(state.put_field(name, value)?);
            }
            if replies_ok {
                Reply::Ok
            } else {
                Reply::Int(added)
            }
        }
        HashCommand::SetNx { key, field, value } => {
            let state = states.of(&key)?;
            if state.hash_field(&field)?.is_some() {
                Reply::Int(0)
            } else {
                state.put_field(field, value)?;
                Reply::Int(1)
            }
        }
        HashCommand::Get { key, field } => {
            let state = states.of(&key)?;
            state.hash_field(&field)?.map_or(Reply::Nil, Reply::Bulk)
        }
        HashCommand::StrLen { key, field } => {
            let state = states.of(&key)?;
            let len = state.hash_field(&field)?.map_or(0, |v| v.len());
            Reply::Int(i64::try_from(len).unwrap_or(i64::MAX))
        }
        HashCommand::MGet { key, fields } => {
            let state = states.of(&key)?;
            state.expect(&[Kind::Hash])?;
            Reply::Array(
                fields
                    .iter()
                    .map(|f| state.fields.get(f).cloned().map_or(Reply::Nil, Reply::Bulk))
                    .collect(),
            )
        }
        HashCommand::Whole { key, part } => {
            let state = states.of(&key)?;
            state.expect(&[Kind::Hash])?;
            let fields = state.fields.iter();
            match part {
                Part::All => Reply::Map(
                    fields
                        .map(|(n, v)| (Reply::Bulk(n.clone()), Reply::Bulk(v.clone())))
                        .collect(),
                ),
                Part::Names => Reply::Array(fields.map(|(n, _)| Reply::Bulk(n.clone())).collect()),
                Part::Values => Reply::Array(fields.map(|(_, v)| Reply::Bulk(v.clone())).collect()),
                Part::Count => Reply::Int(i64::try_from(fields.len()).unwrap_or(i64::MAX)),
            }
        }
        HashCommand::Del { key, fields } => {
            let state = states.of(&key)?;
            state.expect(&[Kind::Hash])?;
            let mut removed = 0;
            for field in fields {
                if state.fields.remove(&field).is_some() {
                    removed += 1;
                    state.changed = true;
                }
            }
            Reply::Int(removed)
        }
        HashCommand::Exists { key, field } => {
            let state = states.of(&key)?;
            Reply::Int(i64::from(state.hash_field(&field)?.is_some()))
        }
        HashCommand::IncrBy { key, field, by } => {
            let state = states.of(&key)?;
            let current = match state.hash_field(&field)? {
                None => 0,
                Some(v) => int(&v).ok_or_else(|| err("ERR hash value is not an integer"))?,
            };
            let new = current
                .checked_add(by)
                .ok_or_else(|| err("ERR increment or decrement would overflow"))?;
            state.put_field(field, Bytes::from(new.to_string()))?;
            Reply::Int(new)
        }
        HashCommand::IncrByFloat { key, field, by } => {
            let state = states.of(&key)?;
            let current = match state.hash_field(&field)? {
                None => 0.0,
                Some(v) => float(&v).ok_or_else(|| err("ERR hash value is not a valid float"))?,
            };
            let new = current + by;
            if !new.is_finite() {
                return Err(err("ERR increment would produce NaN or Infinity"));
            }
            let text = Bytes::from(format_float(new));
            state.put_field(field, text.clone())?;
            Reply::Bulk(text)
        }
        HashCommand::RandField { .. } => {
            return Err(err(
                "ERR HRANDFIELD cannot be called from a script: its answer is random",
            ));
        }
    })
}

fn sets(states: &mut KeyStates, command: SetCommand) -> Result<Reply, Reply> {
    Ok(match command {
        SetCommand::Add { key, members } => {
            let state = states.of(&key)?;
            state.expect(&[Kind::Set])?;
            let added = members.iter().filter(|m| state.add(m)).count();
            Reply::Int(i64::try_from(added).unwrap_or(i64::MAX))
        }
        SetCommand::Rem { key, members } => {
            let state = states.of(&key)?;
            state.expect(&[Kind::Set])?;
            let removed = members.iter().filter(|m| state.remove(m)).count();
            Reply::Int(i64::try_from(removed).unwrap_or(i64::MAX))
        }
        SetCommand::Members { key, scan: None } => {
            let state = states.of(&key)?;
            state.expect(&[Kind::Set])?;
            Reply::Array(state.members().into_iter().map(Reply::Bulk).collect())
        }
        SetCommand::IsMember { key, members, one } => {
            let state = states.of(&key)?;
            state.expect(&[Kind::Set])?;
            let found: Vec<Reply> = members
                .iter()
                .map(|m| Reply::Int(i64::from(state.holds(m))))
                .collect();
            match (one, found.first()) {
                (true, Some(reply)) => reply.clone(),
                _ => Reply::Array(found),
            }
        }
        SetCommand::Card { key } => {
            let state = states.of(&key)?;
            state.expect(&[Kind::Set])?;
            Reply::Int(i64::try_from(state.members().len()).unwrap_or(i64::MAX))
        }
        SetCommand::Members { .. } | SetCommand::Pop { .. } => {
            return Err(err(
                "ERR SSCAN and SPOP cannot be called from a script on this node",
            ));
        }
    })
}

fn ranges(states: &mut KeyStates, command: RangeCommand) -> Result<Reply, Reply> {
    Ok(match command {
        RangeCommand::Append { key, value } => {
            let state = states.of(&key)?;
            let mut joined = state.string()?.map(|v| v.to_vec()).unwrap_or_default();
            joined.extend_from_slice(&value);
            let len = joined.len();
            let keep = (state.expires_at, state.max_idle, state.deadline);
            let fresh = state.fields.is_empty();
            state.set_string(Bytes::from(joined));
            if !fresh {
                (state.expires_at, state.max_idle, state.deadline) = keep;
            }
            Reply::Int(i64::try_from(len).unwrap_or(i64::MAX))
        }
        RangeCommand::StrLen { key } => {
            let state = states.of(&key)?;
            let len = state.string()?.map_or(0, |v| v.len());
            Reply::Int(i64::try_from(len).unwrap_or(i64::MAX))
        }
        RangeCommand::GetRange { key, start, end } => {
            let state = states.of(&key)?;
            let value = state.string()?.unwrap_or_default();
            Reply::Bulk(value.slice(ranges::range(value.len(), start, end)))
        }
        RangeCommand::SetRange { .. } => {
            return Err(err(
                "ERR SETRANGE cannot be called from a script on this node",
            ));
        }
    })
}
