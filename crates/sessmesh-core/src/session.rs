//! The session CRDT: a map of last-writer-wins fields with a clear stamp and expiry.
//!
//! A [`Session`] is a join-semilattice: [`Session::merge`] is commutative,
//! associative and idempotent, so replicas that have seen the same writes hold
//! the same state whatever order the writes and merges arrived in. Every
//! [`Write`] is turned into a small session (its *delta*) and merged in, so
//! applying a write and merging a replica's state are the same operation.
//!
//! # Precedence rules
//! - Each field is a [`crdts::LWWReg`] whose marker is a [`Stamp`]: the newest
//!   stamp wins. Stamps are unique per write, so two different writes never tie.
//!   (If a faulty peer reuses a stamp for another value, the larger value wins, so
//!   merge stays deterministic.)
//! - The **clear stamp** hides everything older than itself: a field, an expiry
//!   register or a touch is *live* only when its stamp is at or after the clear
//!   stamp. Delete (logout) raises the clear stamp to its own stamp; a whole-value
//!   put raises it to its stamp and writes its fields with that same stamp, so they
//!   stay live while everything the put replaced is hidden.
//! - A session *exists* when it has at least one live field with a value and has
//!   not expired. A session with none is a *tombstone*: it is kept so that the
//!   writes it hides cannot return from a stale replica, until
//!   [`Session::collectable_at_ms`].
//! - **Expiry**: the absolute deadline (`expires_at`) and the sliding idle limit
//!   (`max_idle`, measured from the session's last activity: its newest live stamp,
//!   which every write and [`Write::Touch`] advance) are LWW registers. A session
//!   is expired when `now >= deadline`. Once expired it stays expired: before a
//!   replica changes a session it calls [`Session::expire_if_due`], which turns a
//!   passed deadline into a clear stamp, so a later write starts a new session
//!   rather than reviving the old fields.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use crdts::{CvRDT, LWWReg};
use serde::{Deserialize, Serialize};

use crate::clock::Stamp;

/// A field's register: `None` is a deleted field (a field tombstone).
pub type FieldRegister = LWWReg<Option<Bytes>, Stamp>;

/// A time register (absolute deadline or idle limit in ms); `None` means unset.
pub type TimeRegister = LWWReg<Option<u64>, Stamp>;

/// Expiry settings carried by a whole-value [`Write::Put`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Expiry {
    /// Absolute deadline in wall-clock ms since the Unix epoch; `None` for none.
    pub expires_at_ms: Option<u64>,
    /// Sliding idle limit in ms: the session expires this long after its last
    /// activity; `None` for none.
    pub max_idle_ms: Option<u64>,
}

impl Expiry {
    /// No expiry: the session lives until deleted.
    pub const NEVER: Expiry = Expiry {
        expires_at_ms: None,
        max_idle_ms: None,
    };

    /// A sliding idle limit: the session expires `idle` after its last write
    /// or touch.
    pub fn idle_for(idle: Duration) -> Expiry {
        Expiry {
            expires_at_ms: None,
            max_idle_ms: Some(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// An absolute deadline, in wall-clock ms since the Unix epoch.
    pub fn at_ms(deadline_ms: u64) -> Expiry {
        Expiry {
            expires_at_ms: Some(deadline_ms),
            max_idle_ms: None,
        }
    }
}

/// One change to a session, as a client asks for it and as replicas apply it.
///
/// A write means nothing without its [`Stamp`]; the coordinator stamps it once
/// and every replica applies the same `(write, stamp)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Write {
    /// Replaces the whole session: every field, and the expiry settings.
    /// When a name appears twice, the last value counts.
    Put {
        /// The session's fields.
        fields: Vec<(Bytes, Bytes)>,
        /// The session's expiry.
        expiry: Expiry,
    },
    /// Sets one field, keeping the others.
    PutField {
        /// Field name.
        name: Bytes,
        /// Field value.
        value: Bytes,
    },
    /// Deletes one field, keeping the others.
    DeleteField {
        /// Field name.
        name: Bytes,
    },
    /// Deletes the whole session (logout): nothing written before it comes back.
    Delete,
    /// Sets or clears (`None`) the absolute deadline, in wall-clock ms.
    ExpireAt {
        /// The new deadline.
        at_ms: Option<u64>,
    },
    /// Sets or clears (`None`) the sliding idle limit, in ms.
    MaxIdle {
        /// The new idle limit.
        idle_ms: Option<u64>,
    },
    /// Marks activity, extending a sliding expiry.
    Touch,
    /// Removes the session to keep a node under its memory bound: a delete
    /// whose clear stamp is marked as an eviction (see [`Header::evicted`]),
    /// so the tombstone it leaves can be forgotten once every replica has
    /// it. A later write supersedes it as it does a delete.
    Evict,
}

impl Write {
    /// Whether the write may add to what a node holds: puts do; deletes,
    /// deadlines and touches do not (a node over its memory bound still
    /// takes them, as Redis takes `DEL` and `EXPIRE` at `maxmemory`).
    pub fn adds(&self) -> bool {
        matches!(self, Write::Put { .. } | Write::PutField { .. })
    }
}

/// The session-level registers: everything but the fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Everything with an older stamp is hidden.
    pub clear: Stamp,
    /// Whether the clear stamp is an eviction's ([`Write::Evict`]) rather
    /// than a delete's. It goes with the clear stamp: the newer clear
    /// brings its own mark, and at equal stamps (one write) either mark
    /// holds.
    pub evicted: bool,
    /// Absolute deadline register.
    pub expires_at: TimeRegister,
    /// Sliding idle limit register.
    pub max_idle: TimeRegister,
    /// The newest [`Write::Touch`].
    pub touched: Stamp,
}

impl Header {
    /// Whether something stamped `stamp` is live (not hidden by the clear stamp).
    pub fn is_live(&self, stamp: Stamp) -> bool {
        stamp >= self.clear
    }

    /// The newest stamp among the header's registers, live or not.
    pub fn newest_stamp(&self) -> Stamp {
        self.clear
            .max(self.touched)
            .max(self.expires_at.marker)
            .max(self.max_idle.marker)
    }

    /// The expiry deadline in wall-clock ms, given the newest stamp among the
    /// live fields; `None` when the session never expires.
    pub fn deadline_ms(&self, newest_field: Stamp) -> Option<u64> {
        let absolute = self.live_value(&self.expires_at);
        let idle = self.live_value(&self.max_idle).map(|idle_ms| {
            let activity = [
                self.touched,
                self.expires_at.marker,
                self.max_idle.marker,
                newest_field,
            ]
            .into_iter()
            .filter(|s| self.is_live(*s))
            .fold(self.clear, Stamp::max);
            activity.wall_ms().saturating_add(idle_ms)
        });
        match (absolute, idle) {
            (Some(a), Some(i)) => Some(a.min(i)),
            (a, i) => a.or(i),
        }
    }

    /// The latest wall-clock ms at which something this header describes could
    /// be live on some replica, ignoring the clear stamp: the base of the
    /// tombstone collection rule.
    pub fn hides_until_ms(&self, newest: Stamp) -> u64 {
        let mut until = newest.wall_ms();
        if let Some(at) = self.expires_at.val {
            until = until.max(at);
        }
        if let Some(idle_ms) = self.max_idle.val {
            until = until.max(newest.wall_ms().saturating_add(idle_ms));
        }
        until
    }

    fn live_value(&self, register: &TimeRegister) -> Option<u64> {
        if self.is_live(register.marker) {
            register.val
        } else {
            None
        }
    }

    fn merge(&mut self, other: Header) {
        match other.clear.cmp(&self.clear) {
            std::cmp::Ordering::Greater => {
                self.clear = other.clear;
                self.evicted = other.evicted;
            }
            std::cmp::Ordering::Equal => self.evicted |= other.evicted,
            std::cmp::Ordering::Less => {}
        }
        merge_register(&mut self.expires_at, other.expires_at);
        merge_register(&mut self.max_idle, other.max_idle);
        self.touched = self.touched.max(other.touched);
    }
}

/// Merges two LWW registers. Stamps are unique per write, so equal markers
/// carry equal values; should a faulty peer break that, the larger value wins so
/// that merge stays commutative instead of keeping whichever arrived first.
fn merge_register<V: Ord>(mine: &mut LWWReg<V, Stamp>, theirs: LWWReg<V, Stamp>) {
    if theirs.marker == mine.marker && theirs.val > mine.val {
        *mine = theirs;
    } else {
        mine.merge(theirs);
    }
}

/// The replicated state of one session. See the [module docs](self) for the rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    header: Header,
    /// Live fields only: a merge drops fields the clear stamp hides.
    fields: BTreeMap<Bytes, FieldRegister>,
}

impl Session {
    /// The state a single write produces on an empty replica: merging it into a
    /// session applies the write.
    pub fn from_write(write: &Write, stamp: Stamp) -> Session {
        let mut delta = Session::default();
        fn register<V>(val: V, marker: Stamp) -> LWWReg<V, Stamp> {
            LWWReg { val, marker }
        }
        match write {
            Write::Put { fields, expiry } => {
                delta.header.clear = stamp;
                delta.fields = fields
                    .iter()
                    .map(|(name, value)| (name.clone(), register(Some(value.clone()), stamp)))
                    .collect();
                if expiry.expires_at_ms.is_some() {
                    delta.header.expires_at = register(expiry.expires_at_ms, stamp);
                }
                if expiry.max_idle_ms.is_some() {
                    delta.header.max_idle = register(expiry.max_idle_ms, stamp);
                }
            }
            Write::PutField { name, value } => {
                delta
                    .fields
                    .insert(name.clone(), register(Some(value.clone()), stamp));
            }
            Write::DeleteField { name } => {
                delta.fields.insert(name.clone(), register(None, stamp));
            }
            Write::Delete => delta.header.clear = stamp,
            Write::Evict => {
                delta.header.clear = stamp;
                delta.header.evicted = true;
            }
            Write::ExpireAt { at_ms } => delta.header.expires_at = register(*at_ms, stamp),
            Write::MaxIdle { idle_ms } => delta.header.max_idle = register(*idle_ms, stamp),
            Write::Touch => delta.header.touched = stamp,
        }
        delta
    }

    /// Merges a session whose every stamp is older than this one's clear
    /// stamp, given only its header: its fields would all be hidden, so the
    /// result is the same as [`merge`](Self::merge) without unpacking them.
    pub(crate) fn merge_superseded(&mut self, header: Header) {
        debug_assert!(header.newest_stamp() < self.header.clear);
        self.header.merge(header);
        self.drop_hidden_fields();
    }

    /// The field, value and stamp of a session that is one field write
    /// ([`Write::PutField`]) on an empty replica, as
    /// [`from_write`](Self::from_write) makes it: no header, one field with
    /// a value.
    pub(crate) fn as_field_put(&self) -> Option<(&[u8], &[u8], Stamp)> {
        if self.fields.len() != 1 || self.header != Header::default() {
            return None;
        }
        let (name, field) = self.fields.iter().next()?;
        Some((name, field.val.as_deref()?, field.marker))
    }

    /// Builds a session from its parts, dropping fields the clear stamp hides.
    pub fn from_parts(header: Header, fields: BTreeMap<Bytes, FieldRegister>) -> Session {
        let mut session = Session { header, fields };
        session.drop_hidden_fields();
        session
    }

    /// Applies a stamped write: the same as merging [`Session::from_write`].
    pub fn apply(&mut self, write: &Write, stamp: Stamp) {
        self.merge(Session::from_write(write, stamp));
    }

    /// Merges another replica's state into this one (the CRDT join).
    pub fn merge(&mut self, other: Session) {
        self.header.merge(other.header);
        for (name, theirs) in other.fields {
            match self.fields.get_mut(&name) {
                Some(mine) => merge_register(mine, theirs),
                None => {
                    self.fields.insert(name, theirs);
                }
            }
        }
        self.drop_hidden_fields();
    }

    fn drop_hidden_fields(&mut self) {
        let header = &self.header;
        self.fields.retain(|_, field| header.is_live(field.marker));
    }

    /// The session-level registers.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Every field register, deleted fields included, in name order.
    pub fn registers(&self) -> impl ExactSizeIterator<Item = (&Bytes, &FieldRegister)> {
        self.fields.iter()
    }

    /// The newest stamp anywhere in the session.
    pub fn newest_stamp(&self) -> Stamp {
        self.fields
            .values()
            .map(|f| f.marker)
            .fold(self.header.newest_stamp(), Stamp::max)
    }

    fn newest_field_stamp(&self) -> Stamp {
        self.fields
            .values()
            .map(|f| f.marker)
            .max()
            .unwrap_or(Stamp::ZERO)
    }

    /// Roughly how many bytes the session takes on the wire: names, values,
    /// and a stamp per register.
    pub fn approx_bytes(&self) -> usize {
        64 + self
            .fields
            .iter()
            .map(|(name, f)| name.len() + f.val.as_ref().map_or(0, Bytes::len) + 24)
            .sum::<usize>()
    }

    /// Whether some register still holds what a write stamped `stamp`
    /// wrote (stamps are unique, so that write reached this state).
    pub fn holds_stamp(&self, stamp: Stamp) -> bool {
        let header = &self.header;
        header.clear == stamp
            || header.expires_at.marker == stamp
            || header.max_idle.marker == stamp
            || header.touched == stamp
            || self.fields.values().any(|r| r.marker == stamp)
    }

    /// Whether no live field holds a value (deleted, emptied, or never written).
    pub fn is_tombstone(&self) -> bool {
        !self.fields.values().any(|f| f.val.is_some())
    }

    /// Whether this is the tombstone an eviction stamped `stamp` left,
    /// with nothing written since.
    pub fn is_eviction_of(&self, stamp: Stamp) -> bool {
        self.header.evicted
            && self.header.clear == stamp
            && self.newest_stamp() == stamp
            && self.is_tombstone()
    }

    /// The expiry deadline in wall-clock ms, if any.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.header.deadline_ms(self.newest_field_stamp())
    }

    /// Whether a reader at `now_ms` sees this session.
    pub fn is_visible(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && self.deadline_ms().is_none_or(|d| now_ms < d)
    }

    /// The fields a reader at `now_ms` sees, in name order; `None` when the
    /// session does not exist for that reader.
    pub fn visible_fields(&self, now_ms: u64) -> Option<impl Iterator<Item = (&Bytes, &Bytes)>> {
        self.is_visible(now_ms).then(|| {
            self.fields
                .iter()
                .filter_map(|(name, field)| Some((name, field.val.as_ref()?)))
        })
    }

    /// Turns a deadline that has passed by `now_ms` into a clear stamp, so that
    /// the expired content stays dead whatever is written later. Returns whether
    /// anything changed.
    ///
    /// The clear stamp is after both the deadline and the newest stamp in the
    /// session: writes issued after the deadline by other replicas survive it
    /// and start a new session.
    pub fn expire_if_due(&mut self, now_ms: u64) -> bool {
        match self.deadline_ms() {
            Some(deadline) if deadline <= now_ms => {
                let clear = Stamp::at_wall_ms(deadline).max(self.newest_stamp().after());
                self.merge(Session::from_write(&Write::Delete, clear));
                true
            }
            _ => false,
        }
    }

    /// When a tombstone may be dropped: once nothing it hides could still be
    /// live anywhere (its newest write, or the latest deadline it knows of),
    /// plus `grace_ms` for replicas that have not heard of that deadline yet.
    pub fn collectable_at_ms(&self, grace_ms: u64) -> u64 {
        self.header
            .hides_until_ms(self.newest_stamp())
            .saturating_add(grace_ms)
    }

    /// Drops field tombstones stamped before `before_ms` (the sweep passes
    /// `now - grace`). Returns how many were dropped.
    pub fn drop_field_tombstones_before(&mut self, before_ms: u64) -> usize {
        let len = self.fields.len();
        self.fields
            .retain(|_, f| f.val.is_some() || f.marker.wall_ms() >= before_ms);
        len - self.fields.len()
    }
}

impl CvRDT for Session {
    type Validation = crdts::lwwreg::Validation;

    /// Reports a field whose marker both sides hold with different values: a
    /// broken stamp source. [`Session::merge`] still resolves it deterministically.
    fn validate_merge(&self, other: &Self) -> Result<(), Self::Validation> {
        for (name, theirs) in &other.fields {
            if let Some(mine) = self.fields.get(name) {
                mine.validate_merge(theirs)?;
            }
        }
        self.header
            .expires_at
            .validate_merge(&other.header.expires_at)?;
        self.header.max_idle.validate_merge(&other.header.max_idle)
    }

    fn merge(&mut self, other: Self) {
        Session::merge(self, other);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::clock::{Hlc, NodeId};
    use crate::testing::{arb_session, arb_write, stamp};

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn put(fields: &[(&'static str, &'static str)]) -> Write {
        Write::Put {
            fields: fields.iter().map(|(n, v)| (b(n), b(v))).collect(),
            expiry: Expiry::default(),
        }
    }

    fn visible(session: &Session, now_ms: u64) -> Option<BTreeMap<Bytes, Bytes>> {
        Some(
            session
                .visible_fields(now_ms)?
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        )
    }

    fn merged(a: &Session, b: &Session) -> Session {
        let mut out = a.clone();
        out.merge(b.clone());
        out
    }

    #[test]
    fn concurrent_updates_of_different_fields_both_survive() {
        let base = Session::from_write(&put(&[("user", "ada")]), stamp(100, 1));
        let mut a = base.clone();
        let mut c = base;
        a.apply(
            &Write::PutField {
                name: b("cart"),
                value: b("1"),
            },
            stamp(200, 1),
        );
        c.apply(
            &Write::PutField {
                name: b("theme"),
                value: b("dark"),
            },
            stamp(200, 2),
        );
        let m = merged(&a, &c);
        assert_eq!(m, merged(&c, &a));
        let fields = visible(&m, 300).expect("visible");
        assert_eq!(fields.len(), 3, "{fields:?}");
    }

    #[test]
    fn a_whole_value_put_replaces_older_fields_but_not_newer_ones() {
        let mut s = Session::from_write(
            &Write::PutField {
                name: b("old"),
                value: b("1"),
            },
            stamp(100, 1),
        );
        // A field written after the put's stamp, arriving first.
        s.apply(
            &Write::PutField {
                name: b("newer"),
                value: b("2"),
            },
            stamp(300, 2),
        );
        s.apply(&put(&[("user", "ada")]), stamp(200, 1));
        let fields = visible(&s, 400).expect("visible");
        assert_eq!(
            fields,
            BTreeMap::from([(b("newer"), b("2")), (b("user"), b("ada"))])
        );
    }

    #[test]
    fn a_delete_hides_older_writes_from_stale_replicas() {
        let live = Session::from_write(&put(&[("user", "ada")]), stamp(100, 1));
        let mut deleted = live.clone();
        deleted.apply(&Write::Delete, stamp(200, 2));
        assert!(deleted.is_tombstone() && !deleted.is_visible(300));
        // A stale replica still holding the session, and a late field write from before the logout.
        let mut stale = live;
        stale.apply(
            &Write::PutField {
                name: b("cart"),
                value: b("1"),
            },
            stamp(150, 3),
        );
        assert_eq!(visible(&merged(&deleted, &stale), 300), None);
        // A write after the logout starts a new session with only its own data.
        let mut again = merged(&deleted, &stale);
        again.apply(
            &Write::PutField {
                name: b("user"),
                value: b("bob"),
            },
            stamp(250, 1),
        );
        assert_eq!(
            visible(&again, 300),
            Some(BTreeMap::from([(b("user"), b("bob"))]))
        );
    }

    #[test]
    fn expiry_is_at_the_deadline_and_stays_expired() {
        let mut s = Session::from_write(
            &Write::Put {
                fields: vec![(b("user"), b("ada"))],
                expiry: Expiry {
                    expires_at_ms: Some(1_000),
                    max_idle_ms: None,
                },
            },
            stamp(100, 1),
        );
        assert!(s.is_visible(999));
        assert!(
            !s.is_visible(1_000),
            "expired when now reaches the deadline"
        );
        assert!(s.expire_if_due(1_500));
        assert!(!s.expire_if_due(1_500), "expiring is idempotent");
        // A field written after the deadline is a new session, without the expired fields.
        s.apply(
            &Write::PutField {
                name: b("cart"),
                value: b("1"),
            },
            stamp(1_200, 2),
        );
        assert_eq!(
            visible(&s, 1_600),
            Some(BTreeMap::from([(b("cart"), b("1"))]))
        );
    }

    #[test]
    fn sliding_expiry_is_extended_by_touch_and_by_writes() {
        let mut s = Session::from_write(
            &Write::Put {
                fields: vec![(b("user"), b("ada"))],
                expiry: Expiry {
                    expires_at_ms: None,
                    max_idle_ms: Some(1_000),
                },
            },
            stamp(100, 1),
        );
        assert_eq!(s.deadline_ms(), Some(1_100));
        s.apply(&Write::Touch, stamp(900, 1));
        assert_eq!(s.deadline_ms(), Some(1_900));
        s.apply(
            &Write::PutField {
                name: b("cart"),
                value: b("1"),
            },
            stamp(1_500, 2),
        );
        assert_eq!(s.deadline_ms(), Some(2_500));
        s.apply(&Write::ExpireAt { at_ms: Some(2_000) }, stamp(1_600, 2));
        assert_eq!(
            s.deadline_ms(),
            Some(2_000),
            "the earlier of the two deadlines counts"
        );
        s.apply(&Write::MaxIdle { idle_ms: None }, stamp(1_700, 2));
        assert_eq!(s.deadline_ms(), Some(2_000));
        s.apply(&Write::ExpireAt { at_ms: None }, stamp(1_800, 2));
        assert_eq!(s.deadline_ms(), None, "persisted");
    }

    #[test]
    fn a_put_without_expiry_clears_the_old_expiry() {
        let mut s = Session::from_write(
            &Write::Put {
                fields: vec![(b("user"), b("ada"))],
                expiry: Expiry {
                    expires_at_ms: Some(1_000),
                    max_idle_ms: Some(50),
                },
            },
            stamp(100, 1),
        );
        s.apply(&put(&[("user", "bob")]), stamp(200, 1));
        assert_eq!(s.deadline_ms(), None);
    }

    #[test]
    fn tombstones_are_collectable_after_the_latest_deadline_they_cover_plus_grace() {
        let mut s = Session::from_write(
            &Write::Put {
                fields: vec![(b("user"), b("ada"))],
                expiry: Expiry {
                    expires_at_ms: Some(50_000),
                    max_idle_ms: None,
                },
            },
            stamp(100, 1),
        );
        s.apply(&Write::Delete, stamp(1_000, 1));
        assert_eq!(
            s.collectable_at_ms(10_000),
            60_000,
            "the covered deadline 50,000 plus 10,000 grace"
        );
        let mut untimed = Session::from_write(&put(&[("user", "ada")]), stamp(100, 1));
        untimed.apply(&Write::Delete, stamp(1_000, 1));
        assert_eq!(
            untimed.collectable_at_ms(10_000),
            11_000,
            "no deadline: the delete plus grace"
        );
    }

    #[test]
    fn conflicting_markers_merge_deterministically() {
        let a = Session::from_write(
            &Write::PutField {
                name: b("f"),
                value: b("a"),
            },
            stamp(1, 1),
        );
        let c = Session::from_write(
            &Write::PutField {
                name: b("f"),
                value: b("z"),
            },
            stamp(1, 1),
        );
        assert!(a.validate_merge(&c).is_err());
        assert_eq!(merged(&a, &c), merged(&c, &a));
    }

    /// The precedence rules as a naive model: replay every write in stamp order.
    fn model(writes: &[(Write, Stamp)]) -> BTreeMap<Bytes, Bytes> {
        let mut sorted = writes.to_vec();
        sorted.sort_by_key(|(_, s)| *s);
        let mut fields = BTreeMap::new();
        for (write, _) in sorted {
            match write {
                Write::Put { fields: new, .. } => fields = new.into_iter().collect(),
                Write::PutField { name, value } => {
                    fields.insert(name, value);
                }
                Write::DeleteField { name } => {
                    fields.remove(&name);
                }
                Write::Delete | Write::Evict => fields.clear(),
                Write::ExpireAt { .. } | Write::MaxIdle { .. } | Write::Touch => {}
            }
        }
        fields
    }

    fn without_expiry(write: Write) -> Write {
        match write {
            Write::Put { fields, .. } => Write::Put {
                fields,
                expiry: Expiry::default(),
            },
            Write::ExpireAt { .. } | Write::MaxIdle { .. } => Write::Touch,
            other => other,
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// Replica issues a write at a wall-clock time.
        Write(usize, Write, u64),
        /// Replica `to` merges replica `from`'s state.
        Merge { from: usize, to: usize },
        /// Replica expires what is due at a wall-clock time, as a sweep does.
        Sweep(usize, u64),
    }

    fn arb_steps(sweeps: bool) -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            4 => (0usize..3, arb_write(), 0u64..60_000).prop_map(|(r, w, ms)| Step::Write(r, w, ms)),
            2 => (0usize..3, 0usize..3).prop_map(|(from, to)| Step::Merge { from, to }),
            if sweeps { 1 } else { 0 } => (0usize..3, 0u64..60_000).prop_map(|(r, ms)| Step::Sweep(r, ms)),
        ];
        prop::collection::vec(step, 0..40)
    }

    /// Runs a history on three replicas the way the store does (expire what is
    /// due before changing), then merges everything in `order`.
    fn run(
        steps: &[Step],
        order: &[usize],
        strip_expiry: bool,
    ) -> ([Session; 3], Vec<(Write, Stamp)>) {
        let mut replicas: [Session; 3] = Default::default();
        let clocks: Vec<Hlc> = (1..=3).map(|n| Hlc::new(NodeId(n), 500)).collect();
        let mut issued = Vec::new();
        for step in steps {
            match step.clone() {
                Step::Write(r, write, ms) => {
                    let write = if strip_expiry {
                        without_expiry(write)
                    } else {
                        write
                    };
                    let stamp = clocks[r].stamp(ms);
                    replicas[r].expire_if_due(ms);
                    replicas[r].apply(&write, stamp);
                    issued.push((write, stamp));
                }
                Step::Merge { from, to } => {
                    let theirs = replicas[from].clone();
                    replicas[to].merge(theirs);
                }
                Step::Sweep(r, ms) => {
                    replicas[r].expire_if_due(ms);
                }
            }
        }
        // Anti-entropy: every replica merges every other, in the given order, twice round.
        for _ in 0..2 {
            for &to in order {
                for &from in order {
                    let theirs = replicas[from].clone();
                    replicas[to].merge(theirs);
                }
            }
        }
        (replicas, issued)
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_session(), c in arb_session()) {
            prop_assert_eq!(merged(&a, &c), merged(&c, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_session(), c in arb_session(), d in arb_session()) {
            prop_assert_eq!(merged(&merged(&a, &c), &d), merged(&a, &merged(&c, &d)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_session(), c in arb_session()) {
            prop_assert_eq!(merged(&a, &a), a.clone());
            let once = merged(&a, &c);
            prop_assert_eq!(merged(&once, &c), once);
        }

        /// Random histories of every kind of write (and sweeps) on 3 replicas,
        /// with merges in between, converge to one state whatever the final
        /// merge order.
        #[test]
        fn replicas_converge_in_any_merge_order(
            steps in arb_steps(true),
            order in Just(vec![0usize, 1, 2]).prop_shuffle(),
        ) {
            let (replicas, _) = run(&steps, &order, false);
            prop_assert_eq!(&replicas[0], &replicas[1]);
            prop_assert_eq!(&replicas[1], &replicas[2]);
            let (again, _) = run(&steps, &[2, 1, 0], false);
            prop_assert_eq!(&again[0], &replicas[0]);
        }

        /// Without expiry, the merged result is exactly what replaying every
        /// write in stamp order gives: the precedence rules hold, whatever
        /// order writes and merges arrived in.
        #[test]
        fn merged_replicas_show_what_stamp_order_says(
            steps in arb_steps(false),
            order in Just(vec![0usize, 1, 2]).prop_shuffle(),
        ) {
            let (replicas, issued) = run(&steps, &order, true);
            let expected = model(&issued);
            let shown = visible(&replicas[0], 0).unwrap_or_default();
            prop_assert_eq!(shown, expected);
        }

        /// A replica that applies the writes' deltas in any order holds the same state.
        #[test]
        fn writes_commute(
            (writes, shuffled) in prop::collection::vec((arb_write(), 0u64..60_000, 1u64..4), 0..12)
                .prop_map(|ws| ws.into_iter().enumerate().map(|(i, (w, ms, n))| (w, stamp(ms, n * 100 + i as u64))).collect::<Vec<_>>())
                .prop_flat_map(|ws| (Just(ws.clone()), Just(ws).prop_shuffle())),
        ) {
            let mut forward = Session::default();
            for (w, s) in &writes {
                forward.apply(w, *s);
            }
            let mut backward = Session::default();
            for (w, s) in &shuffled {
                backward.apply(w, *s);
            }
            prop_assert_eq!(forward, backward);
        }
    }
}
