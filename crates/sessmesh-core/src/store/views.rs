//! Views of stored sessions: borrowed ([`SessionRef`]), owned
//! ([`SessionData`]), and as anti-entropy lists them ([`StoredEntry`]).

use super::*;

/// A session as a reader sees it, borrowed from the [`Store`].
#[derive(Clone, Debug)]
pub struct SessionRef<'a> {
    pub(super) packed: Packed<'a>,
}

impl<'a> SessionRef<'a> {
    /// The session's key.
    pub fn key(&self) -> &'a [u8] {
        self.packed.key
    }

    /// The session's fields, in name order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.packed
            .fields()
            .filter_map(|f| Some((f.name, f.value?)))
    }

    /// One field's value.
    pub fn field(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.packed.fields().find(|f| f.name == name)?.value
    }

    /// When the session expires, in wall-clock ms; `None` if it never does.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.packed.deadline_ms()
    }
}

impl SessionRef<'_> {
    /// An owned copy, for use after the store is unlocked: one allocation.
    pub fn to_data(&self) -> SessionData {
        SessionData {
            packed: self.packed.bytes.into(),
        }
    }
}

/// An owned copy of a session as a reader saw it, in one buffer its fields
/// borrow from. Made by [`SessionRef::to_data`] or [`SessionData::new`].
#[derive(Clone, PartialEq, Eq)]
pub struct SessionData {
    packed: Box<[u8]>,
}

impl SessionData {
    /// The visible state of `session` under `key` for a reader at `now_ms`;
    /// `None` when that reader does not see it (deleted or expired).
    pub fn new(key: &[u8], session: &Session, now_ms: u64) -> Option<SessionData> {
        session.is_visible(now_ms).then(|| SessionData {
            packed: packed::encode(key, session),
        })
    }

    fn view(&self) -> Packed<'_> {
        Packed::parse(&self.packed)
    }

    /// The session's key.
    pub fn key(&self) -> &[u8] {
        self.view().key
    }

    /// One field's value.
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.view().fields().find(|f| f.name == name)?.value
    }

    /// The fields, in name order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.view()
            .fields()
            .filter_map(|f| Some((f.name, f.value?)))
    }

    /// When the session expires, in wall-clock ms since the Unix epoch;
    /// `None` if it never does.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.view().deadline_ms()
    }
}

impl std::fmt::Debug for SessionData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields: Vec<(String, String)> = self
            .fields()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        f.debug_struct("SessionData")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("fields", &fields)
            .field("deadline_ms", &self.deadline_ms())
            .finish()
    }
}

/// One stored entry, as [`Store::with_entries`] yields it.
#[derive(Clone, Debug)]
pub struct StoredEntry<'a> {
    pub(super) packed: Packed<'a>,
}

impl<'a> StoredEntry<'a> {
    /// The entry's key.
    pub fn key(&self) -> &'a [u8] {
        self.packed.key
    }

    /// [`crate::key_hash`] of the key.
    pub fn key_hash(&self) -> u64 {
        key_hash(self.packed.key)
    }

    /// The fingerprint anti-entropy compares.
    pub fn fingerprint(&self) -> u64 {
        self.packed.fingerprint()
    }

    /// The full replicated state.
    pub fn session(&self) -> Session {
        self.packed.to_session()
    }

    /// The entry as replicas exchange it.
    pub fn to_entry(&self) -> Entry {
        Entry {
            key: Bytes::copy_from_slice(self.packed.key),
            session: self.session(),
        }
    }
}
