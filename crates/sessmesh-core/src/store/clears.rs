//! Clears: a stamped delete of every key in a range (a Redis `FLUSHDB`),
//! kept as one record per range, so that it merges like a delete of each
//! key: a session written before the clear is hidden wherever it comes
//! from later (a replica that missed the clear, a hint, a handoff,
//! anti-entropy), and one written after it is not.
//!
//! A clear is applied at once to every stored key in its range (each gets
//! the clear's stamp as a delete), and the record stays for the tombstone
//! grace period, during which every incoming state of a key in the range
//! is merged with it first. After that the record goes, as a tombstone
//! does.

use super::*;

/// A range of keys: those that begin with `prefix` and with none of
/// `except` (database 0 of a Redis layer is every key but those of the
/// other databases).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    /// What every key in the range begins with (empty: every key).
    pub prefix: Bytes,
    /// Beginnings that take a key out of the range.
    pub except: Vec<Bytes>,
}

impl KeyRange {
    /// Whether `key` is in the range.
    pub fn covers(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix) && !self.except.iter().any(|e| key.starts_with(e))
    }
}

/// The clears a store keeps: the newest stamp per range.
#[derive(Debug, Default)]
pub(super) struct Clears {
    /// Whether there are any (read without the lock on every merge).
    pub(super) any: AtomicBool,
    pub(super) ranges: RwLock<Vec<(KeyRange, Stamp)>>,
}

impl Clears {
    /// The newest clear stamp covering `key`, if any.
    pub(super) fn covering(&self, key: &[u8]) -> Option<Stamp> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.ranges
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(range, _)| range.covers(key))
            .map(|(_, stamp)| *stamp)
            .max()
    }

    /// Records a clear; whether it is news (no clear of the range as new).
    fn record(&self, range: &KeyRange, stamp: Stamp) -> bool {
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        let news = match ranges.iter_mut().find(|(r, _)| r == range) {
            Some((_, kept)) if *kept >= stamp => false,
            Some((_, kept)) => {
                *kept = stamp;
                true
            }
            None => {
                ranges.push((range.clone(), stamp));
                true
            }
        };
        self.any.store(!ranges.is_empty(), Ordering::Release);
        news
    }

    /// Drops the clears older than `before_ms`; how many went.
    fn forget(&self, before_ms: u64) -> usize {
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        let before = ranges.len();
        ranges.retain(|(_, stamp)| stamp.wall_ms() >= before_ms);
        self.any.store(!ranges.is_empty(), Ordering::Release);
        before - ranges.len()
    }
}

impl Shared {
    /// `incoming` for `key` with the clears covering it applied: what
    /// they hide of it hidden.
    pub(super) fn cleared(&self, key: &[u8], mut incoming: Session) -> Session {
        if let Some(stamp) = self.clears.covering(key)
            && stamp > incoming.header().clear
        {
            incoming.merge(Session::from_write(&Write::Delete, stamp));
        }
        incoming
    }
}

impl Store {
    /// Clears every key in `range` written before `stamp`, and keeps the
    /// clear for the tombstone grace period (see the module docs). Returns
    /// whether it was news: a clear of the range at least as new already
    /// kept changes nothing.
    pub fn clear(&mut self, range: &KeyRange, stamp: Stamp, now_ms: u64) -> bool {
        if !self.shared.clears.record(range, stamp) {
            return false;
        }
        for index in 0..self.partition_count() {
            let mut locked = self.shared.write(PartitionId(index));
            let keys: Vec<Bytes> = locked
                .table
                .iter()
                .map(|packed| packed::key_of(packed))
                .filter(|key| range.covers(key))
                .map(Bytes::copy_from_slice)
                .collect();
            for key in keys {
                let delete = Session::from_write(&Write::Delete, stamp);
                self.shared
                    .merge(&mut locked, &key, key_hash(&key), delete, now_ms);
            }
        }
        true
    }

    /// The clears kept, with their stamps, for peers that may have missed
    /// them.
    pub fn clears(&self) -> Vec<(KeyRange, Stamp)> {
        self.shared
            .clears
            .ranges
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drops the clears older than the tombstone grace period; how many
    /// went.
    pub fn forget_clears(&mut self, now_ms: u64) -> usize {
        let before = now_ms.saturating_sub(self.shared.tombstone_grace_ms);
        self.shared.clears.forget(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{HlcTime, NodeId};

    fn store() -> Store {
        Store::new(&Config {
            partition_count: 8,
            ..Config::default()
        })
    }

    fn stamp(ms: u64) -> Stamp {
        Stamp::new(HlcTime::from_wall_ms(ms), NodeId(1))
    }

    fn value(v: &'static str) -> Write {
        Write::Put {
            fields: vec![(Bytes::new(), Bytes::from_static(v.as_bytes()))],
            expiry: Expiry::NEVER,
        }
    }

    fn db(n: u8) -> KeyRange {
        KeyRange {
            prefix: Bytes::from(format!("d{n}:")),
            except: Vec::new(),
        }
    }

    fn visible(store: &Store, key: &[u8], now_ms: u64) -> bool {
        store.session(key).is_some_and(|s| s.is_visible(now_ms))
    }

    #[test]
    fn a_clear_hides_what_came_before_it_in_its_range_only() {
        let mut store = store();
        store.apply(b"d1:a", &value("x"), stamp(100), 100).unwrap();
        store.apply(b"d1:b", &value("x"), stamp(110), 110).unwrap();
        store.apply(b"d2:a", &value("x"), stamp(120), 120).unwrap();
        assert!(visible(&store, b"d1:a", 150));
        assert!(store.clear(&db(1), stamp(200), 200));
        assert!(!visible(&store, b"d1:a", 200));
        assert!(!visible(&store, b"d1:b", 200));
        assert!(visible(&store, b"d2:a", 200));
        // An older clear of the same range is no news.
        assert!(!store.clear(&db(1), stamp(150), 200));
        // A write from before it, arriving late, stays hidden.
        store
            .apply(b"d1:c", &value("old"), stamp(190), 210)
            .unwrap();
        assert!(!visible(&store, b"d1:c", 210));
        // One from after it is seen.
        store
            .apply(b"d1:a", &value("new"), stamp(300), 300)
            .unwrap();
        assert!(visible(&store, b"d1:a", 300));
    }

    #[test]
    fn the_database_zero_range_spares_the_other_databases() {
        let zero = KeyRange {
            prefix: Bytes::new(),
            except: vec![Bytes::from_static(b"\0db")],
        };
        assert!(zero.covers(b"session"));
        assert!(!zero.covers(b"\0db1\0session"));
        let mut store = store();
        store.apply(b"k", &value("x"), stamp(10), 10).unwrap();
        store
            .apply(b"\0db1\0k", &value("x"), stamp(10), 10)
            .unwrap();
        store.clear(&zero, stamp(20), 20);
        assert!(!visible(&store, b"k", 20));
        assert!(visible(&store, b"\0db1\0k", 20));
    }

    #[test]
    fn clears_are_forgotten_after_the_grace_period() {
        let mut store = store();
        let grace = Config::default().tombstone_grace_ms;
        store.clear(&db(1), stamp(1_000), 1_000);
        assert_eq!(store.forget_clears(1_000 + grace - 1), 0);
        assert_eq!(store.clears().len(), 1);
        assert_eq!(store.forget_clears(1_001 + grace), 1);
        assert!(store.clears().is_empty());
    }
}
