//! The commands a script's `redis.call` runs: on the state of its key as
//! the script read it, held in memory while the script runs. A call goes
//! through the same lookup, key rewrite and parse as a request; only the
//! run differs: here it changes [`KeyState`], and the script's run ends
//! with the one write that takes the key from the state read to the state
//! left (see `scripts.rs`).
//!
//! The commands a script may call are the data commands of one key:
//! strings, hashes, sets, and whole keys with their expiry. Others answer
//! an error naming the command.

use std::collections::BTreeMap;

use sessmesh::Session;
use sessmesh_core::consensus::format_float;

use super::hashes::Part;
use super::strings::{Condition as SetCondition, NewExpiry, Set, SetExpiry};
use super::values;
use super::*;

/// One key's state as a script sees and changes it.
#[derive(Clone, Debug)]
pub(super) struct KeyState {
    /// The key, as stored (its database's prefix included).
    key: Bytes,
    /// The visible fields.
    fields: BTreeMap<Bytes, Bytes>,
    /// The absolute deadline register's value, Unix ms.
    expires_at: Option<u64>,
    /// The sliding idle limit's value, ms.
    max_idle: Option<u64>,
    /// When the key expires, as read.
    deadline: Option<u64>,
    /// Whether a call changed it.
    changed: bool,
    /// The last tag given to a set add.
    tag: u64,
}

/// The kind of value a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    None,
    String,
    Hash,
    Set,
}

impl KeyState {
    /// The state of `key` as `session` holds it for a reader at `now_ms`.
    /// `tag` starts the tags of its set adds.
    pub(super) fn of(key: Bytes, session: Option<&Session>, now_ms: u64, tag: u64) -> Self {
        let mut state = KeyState {
            key,
            fields: BTreeMap::new(),
            expires_at: None,
            max_idle: None,
            deadline: None,
            changed: false,
            tag,
        };
        let Some(session) = session else {
            return state;
        };
        let Some(data) = SessionData::new(&state.key, session, now_ms) else {
            return state;
        };
        state.fields = data
            .fields()
            .map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)))
            .collect();
        let header = session.header();
        let live = |r: &sessmesh_core::session::TimeRegister| {
            header.is_live(r.marker).then_some(r.val).flatten()
        };
        state.expires_at = live(&header.expires_at);
        state.max_idle = live(&header.max_idle);
        state.deadline = data.deadline_ms();
        state
    }

    /// The one write that takes the key from the state read to this one;
    /// `None` when no call changed it.
    pub(super) fn write(&self) -> Option<Write> {
        if !self.changed {
            return None;
        }
        if self.fields.is_empty() {
            return Some(Write::Delete);
        }
        Some(Write::Put {
            fields: self
                .fields
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            expiry: Expiry {
                expires_at_ms: self.expires_at,
                max_idle_ms: self.max_idle,
            },
        })
    }

    fn kind(&self) -> Kind {
        let mut names = self.fields.keys();
        match (names.next(), names.next()) {
            (None, _) => Kind::None,
            (Some(n), None) if n.as_ref() == STRING_FIELD => Kind::String,
            _ if self.fields.keys().all(|n| n.starts_with(SET_PREFIX)) => Kind::Set,
            _ => Kind::Hash,
        }
    }

    fn expect(&self, kinds: &[Kind]) -> Result<(), Reply> {
        let kind = self.kind();
        if kind == Kind::None || kinds.contains(&kind) {
            Ok(())
        } else {
            Err(wrong_type())
        }
    }

    fn string(&self) -> Result<Option<Bytes>, Reply> {
        self.expect(&[Kind::String])?;
        Ok(self.fields.get(STRING_FIELD).cloned())
    }

    fn set_string(&mut self, value: Bytes) {
        self.fields.clear();
        self.fields.insert(Bytes::from_static(STRING_FIELD), value);
        self.changed = true;
    }

    fn clear(&mut self) -> bool {
        let had = !self.fields.is_empty();
        self.fields.clear();
        self.set_deadline(None);
        self.changed |= had;
        had
    }

    fn set_deadline(&mut self, at: Option<u64>) {
        self.expires_at = at;
        self.max_idle = None;
        self.deadline = at;
        self.changed = true;
    }

    fn hash_field(&self, name: &[u8]) -> Result<Option<Bytes>, Reply> {
        self.expect(&[Kind::Hash])?;
        Ok(self.fields.get(name).cloned())
    }

    /// Sets hash field `name`; whether it is new.
    fn put_field(&mut self, name: Bytes, value: Bytes) -> Result<bool, Reply> {
        if name.starts_with(SET_PREFIX) || name.as_ref() == STRING_FIELD {
            return Err(err(
                "ERR hash field names may not be empty or begin with a zero byte here",
            ));
        }
        self.changed = true;
        Ok(self.fields.insert(name, value).is_none())
    }

    /// Whether the set holds `member`.
    fn holds(&self, member: &[u8]) -> bool {
        self.fields
            .keys()
            .any(|n| values::member_of(n) == Some(member))
    }

    /// Adds `member` to the set unless it is there; whether it was not.
    fn add(&mut self, member: &[u8]) -> bool {
        if self.holds(member) {
            return false;
        }
        // A tag of its own: the set is written whole, so one unique among
        // this run's adds and unlikely elsewhere will do.
        self.tag = self.tag.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.fields
            .insert(member_field(member, self.tag), Bytes::new());
        self.changed = true;
        true
    }

    /// Removes every add of `member`; whether there was one.
    fn remove(&mut self, member: &[u8]) -> bool {
        let before = self.fields.len();
        self.fields
            .retain(|n, _| values::member_of(n) != Some(member));
        let removed = self.fields.len() != before;
        self.changed |= removed;
        removed
    }

    fn members(&self) -> Vec<Bytes> {
        members_of(self.fields.keys().map(|n| n.as_ref()))
    }

    fn ttl(&self, now_ms: i64, in_ms: bool) -> Reply {
        if self.fields.is_empty() {
            return Reply::Int(-2);
        }
        match self.deadline {
            None => Reply::Int(-1),
            Some(d) => {
                let left = i64::try_from(d).unwrap_or(i64::MAX).saturating_sub(now_ms);
                Reply::Int(if in_ms { left } else { (left + 500) / 1000 })
            }
        }
    }
}

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

/// Runs a parsed call on `state`, the one key the script may touch.
pub(super) fn run(state: &mut KeyState, call: Call, now_ms: i64) -> Result<Reply, Reply> {
    match call {
        Call::Strings(command) => strings(state, command, now_ms),
        Call::Keys(command) => keys(state, command, now_ms),
        Call::Hashes(command) => hashes(state, command),
        Call::Sets(command) => sets(state, command),
        Call::Ranges(command) => ranges(state, command),
        _ => Err(err(
            "ERR this command cannot be called from a script on this node",
        )),
    }
}

/// Refuses a key the script did not declare.
fn mine(state: &KeyState, key: &[u8]) -> Result<(), Reply> {
    if key == state.key.as_ref() {
        Ok(())
    } else {
        Err(err(
            "ERR a script may only touch the key it declares in KEYS (one key per script on this node)",
        ))
    }
}

fn strings(state: &mut KeyState, command: StringCommand, now_ms: i64) -> Result<Reply, Reply> {
    Ok(match command {
        StringCommand::Get { key } => {
            mine(state, &key)?;
            state.string()?.map_or(Reply::Nil, Reply::Bulk)
        }
        StringCommand::Set(Set {
            key,
            value,
            condition,
            get,
            expiry,
        }) => {
            mine(state, &key)?;
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
            mine(state, &key)?;
            let old = state.string()?;
            if old.is_some() {
                state.clear();
            }
            old.map_or(Reply::Nil, Reply::Bulk)
        }
        StringCommand::GetEx { key, change } => {
            mine(state, &key)?;
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
                mine(state, &key)?;
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
                mine(state, key)?;
            }
            match pairs.into_iter().last() {
                Some((_, value)) if state.fields.is_empty() => {
                    state.set_string(value);
                    state.set_deadline(None);
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            }
        }
        StringCommand::MSet { pairs } => {
            for (key, value) in pairs {
                mine(state, &key)?;
                state.set_string(value);
                state.set_deadline(None);
            }
            Reply::Ok
        }
        StringCommand::SetNx { key, value } => {
            mine(state, &key)?;
            if state.fields.is_empty() {
                state.set_string(value);
                state.set_deadline(None);
                Reply::Int(1)
            } else {
                Reply::Int(0)
            }
        }
        StringCommand::IncrBy { key, by } => {
            mine(state, &key)?;
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
            mine(state, &key)?;
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

fn keys(state: &mut KeyState, command: KeyCommand, now_ms: i64) -> Result<Reply, Reply> {
    Ok(match command {
        KeyCommand::Del { keys } => {
            let mut deleted = 0;
            for key in keys {
                mine(state, &key)?;
                deleted += i64::from(state.clear());
            }
            Reply::Int(deleted)
        }
        KeyCommand::Exists { keys } => {
            let mut found = 0;
            for key in keys {
                mine(state, &key)?;
                found += i64::from(!state.fields.is_empty());
            }
            Reply::Int(found)
        }
        KeyCommand::Type { key } => {
            mine(state, &key)?;
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
            mine(state, &key)?;
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
            mine(state, &key)?;
            state.ttl(now_ms, in_ms)
        }
        KeyCommand::Persist { key } => {
            mine(state, &key)?;
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

fn hashes(state: &mut KeyState, command: HashCommand) -> Result<Reply, Reply> {
    Ok(match command {
        HashCommand::Set {
            key,
            pairs,
            replies_ok,
        } => {
            mine(state, &key)?;
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
            mine(state, &key)?;
            if state.hash_field(&field)?.is_some() {
                Reply::Int(0)
            } else {
                state.put_field(field, value)?;
                Reply::Int(1)
            }
        }
        HashCommand::Get { key, field } => {
            mine(state, &key)?;
            state.hash_field(&field)?.map_or(Reply::Nil, Reply::Bulk)
        }
        HashCommand::StrLen { key, field } => {
            mine(state, &key)?;
            let len = state.hash_field(&field)?.map_or(0, |v| v.len());
            Reply::Int(i64::try_from(len).unwrap_or(i64::MAX))
        }
        HashCommand::MGet { key, fields } => {
            mine(state, &key)?;
            state.expect(&[Kind::Hash])?;
            Reply::Array(
                fields
                    .iter()
                    .map(|f| state.fields.get(f).cloned().map_or(Reply::Nil, Reply::Bulk))
                    .collect(),
            )
        }
        HashCommand::Whole { key, part } => {
            mine(state, &key)?;
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
            mine(state, &key)?;
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
            mine(state, &key)?;
            Reply::Int(i64::from(state.hash_field(&field)?.is_some()))
        }
        HashCommand::IncrBy { key, field, by } => {
            mine(state, &key)?;
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
            mine(state, &key)?;
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

fn sets(state: &mut KeyState, command: SetCommand) -> Result<Reply, Reply> {
    Ok(match command {
        SetCommand::Add { key, members } => {
            mine(state, &key)?;
            state.expect(&[Kind::Set])?;
            let added = members.iter().filter(|m| state.add(m)).count();
            Reply::Int(i64::try_from(added).unwrap_or(i64::MAX))
        }
        SetCommand::Rem { key, members } => {
            mine(state, &key)?;
            state.expect(&[Kind::Set])?;
            let removed = members.iter().filter(|m| state.remove(m)).count();
            Reply::Int(i64::try_from(removed).unwrap_or(i64::MAX))
        }
        SetCommand::Members { key, scan: None } => {
            mine(state, &key)?;
            state.expect(&[Kind::Set])?;
            Reply::Array(state.members().into_iter().map(Reply::Bulk).collect())
        }
        SetCommand::IsMember { key, members, one } => {
            mine(state, &key)?;
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
            mine(state, &key)?;
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

fn ranges(state: &mut KeyState, command: RangeCommand) -> Result<Reply, Reply> {
    Ok(match command {
        RangeCommand::Append { key, value } => {
            mine(state, &key)?;
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
            mine(state, &key)?;
            let len = state.string()?.map_or(0, |v| v.len());
            Reply::Int(i64::try_from(len).unwrap_or(i64::MAX))
        }
        RangeCommand::GetRange { key, start, end } => {
            mine(state, &key)?;
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
