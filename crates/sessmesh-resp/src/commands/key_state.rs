//! The keys a script or an atomic transaction works on, held in memory
//! while it runs: each key's state as read by consensus, changed by the
//! calls (`script_calls.rs`), and at the end the one write per key that
//! takes it from the state read to the state left (see `scripts.rs`).

use std::collections::BTreeMap;

use sessmesh::Session;

use super::*;

/// One key's state as a script sees and changes it.
#[derive(Clone, Debug)]
pub(super) struct KeyState {
    /// The key, as stored (its database's prefix included).
    pub(super) key: Bytes,
    /// The visible fields.
    pub(super) fields: BTreeMap<Bytes, Bytes>,
    /// The absolute deadline register's value, Unix ms.
    pub(super) expires_at: Option<u64>,
    /// The sliding idle limit's value, ms.
    pub(super) max_idle: Option<u64>,
    /// When the key expires, as read.
    pub(super) deadline: Option<u64>,
    /// Whether a call changed it.
    pub(super) changed: bool,
    /// The last tag given to a set add.
    pub(super) tag: u64,
}

/// The kind of value a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
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

    pub(super) fn kind(&self) -> Kind {
        let mut names = self.fields.keys();
        match (names.next(), names.next()) {
            (None, _) => Kind::None,
            (Some(n), None) if n.as_ref() == STRING_FIELD => Kind::String,
            _ if self.fields.keys().all(|n| n.starts_with(SET_PREFIX)) => Kind::Set,
            _ => Kind::Hash,
        }
    }

    pub(super) fn expect(&self, kinds: &[Kind]) -> Result<(), Reply> {
        let kind = self.kind();
        if kind == Kind::None || kinds.contains(&kind) {
            Ok(())
        } else {
            Err(wrong_type())
        }
    }

    pub(super) fn string(&self) -> Result<Option<Bytes>, Reply> {
        self.expect(&[Kind::String])?;
        Ok(self.fields.get(STRING_FIELD).cloned())
    }

    pub(super) fn set_string(&mut self, value: Bytes) {
        self.fields.clear();
        self.fields.insert(Bytes::from_static(STRING_FIELD), value);
        self.changed = true;
    }

    pub(super) fn clear(&mut self) -> bool {
        let had = !self.fields.is_empty();
        self.fields.clear();
        self.set_deadline(None);
        self.changed |= had;
        had
    }

    pub(super) fn set_deadline(&mut self, at: Option<u64>) {
        self.expires_at = at;
        self.max_idle = None;
        self.deadline = at;
        self.changed = true;
    }

    pub(super) fn hash_field(&self, name: &[u8]) -> Result<Option<Bytes>, Reply> {
        self.expect(&[Kind::Hash])?;
        Ok(self.fields.get(name).cloned())
    }

    /// Sets hash field `name`; whether it is new.
    pub(super) fn put_field(&mut self, name: Bytes, value: Bytes) -> Result<bool, Reply> {
        if name.starts_with(SET_PREFIX) || name.as_ref() == STRING_FIELD {
            return Err(err(
                "ERR hash field names may not be empty or begin with a zero byte here",
            ));
        }
        self.changed = true;
        Ok(self.fields.insert(name, value).is_none())
    }

    /// Whether the set holds `member`.
    pub(super) fn holds(&self, member: &[u8]) -> bool {
        self.fields
            .keys()
            .any(|n| values::member_of(n) == Some(member))
    }

    /// Adds `member` to the set unless it is there; whether it was not.
    pub(super) fn add(&mut self, member: &[u8]) -> bool {
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
    pub(super) fn remove(&mut self, member: &[u8]) -> bool {
        let before = self.fields.len();
        self.fields
            .retain(|n, _| values::member_of(n) != Some(member));
        let removed = self.fields.len() != before;
        self.changed |= removed;
        removed
    }

    pub(super) fn members(&self) -> Vec<Bytes> {
        members_of(self.fields.keys().map(|n| n.as_ref()))
    }

    pub(super) fn ttl(&self, now_ms: i64, in_ms: bool) -> Reply {
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

/// The states of the keys a script declares (or a transaction names), in
/// their order; a call may touch only these.
#[derive(Clone, Debug)]
pub(super) struct KeyStates(Vec<KeyState>);

impl KeyStates {
    /// The keys' states.
    pub(super) fn new(states: Vec<KeyState>) -> Self {
        KeyStates(states)
    }

    /// The state of `key`, if the script declared it.
    pub(super) fn of(&mut self, key: &[u8]) -> Result<&mut KeyState, Reply> {
        self.0
            .iter_mut()
            .find(|s| s.key.as_ref() == key)
            .ok_or_else(|| {
                err(
                    "ERR a script may only touch the keys it declares in KEYS, and a transaction \
                 only the keys its commands name",
                )
            })
    }

    /// Each key's write, in order (`None` for a key no call changed).
    pub(super) fn writes(&self) -> Vec<Option<Write>> {
        self.0.iter().map(KeyState::write).collect()
    }
}
