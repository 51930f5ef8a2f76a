//! The merge: how an incoming session state (a stamped write, a replica's
//! state, a repair) joins what a partition holds, packed, with its digest
//! and the change it makes, in one table operation under the partition's
//! write lock.

use super::locking::{Partition, Shared, Slot, packed_slot_hash, slot_hash};
use super::*;

impl Shared {
    /// Merges `incoming` into the session under `key` in `partition` (the
    /// partition's write lock held). See [`Store::merge_remote`].
    pub(super) fn merge(
        &self,
        partition: &mut Partition,
        key: &[u8],
        hash: u64,
        incoming: Session,
        now_ms: u64,
    ) -> bool {
        let incoming = self.cleared(key, incoming);
        let Partition { table, digest } = partition;
        let mut found = table.find_entry(slot_hash(hash), |packed| packed::key_of(packed) == key);
        let due_by = now_ms.max(incoming.newest_stamp().wall_ms());
        // One field set on a stored session that is not expiring: the
        // packed bytes take the field in place, with no unpacking. It keeps
        // a value, so the session stays visible and nothing is collected.
        if let Some((name, value, stamp)) = incoming.as_field_put()
            && let Ok(slot) = &mut found
        {
            let old = Packed::parse(slot.get());
            if old.deadline_ms().is_none_or(|d| d > due_by)
                && let Some(new) = packed::with_field(&old, name, value, stamp)
            {
                digest.remove(hash, old.fingerprint());
                digest.add(hash, Packed::parse(&new).fingerprint());
                self.resized(slot.get().len(), new.len());
                slot.get_mut().packed = new;
                self.access.used(slot.get(), hash);
                self.record(key, ChangeKind::Updated);
                return true;
            }
        }
        let (old_fingerprint, old_live, mut session) = match &found {
            Ok(slot) => {
                let old = Packed::parse(slot.get());
                let old_newest = old
                    .fields()
                    .map(|f| f.stamp)
                    .fold(old.header.newest_stamp(), Stamp::max);
                let expires = old.deadline_ms().is_some_and(|d| d <= due_by);
                // A whole-value put (or a delete) newer than everything
                // stored hides every stored field: skip unpacking them.
                let session = if !expires && incoming.header().clear > old_newest {
                    let mut session = incoming;
                    session.merge_superseded(old.header.clone());
                    session
                } else {
                    let mut session = old.to_session();
                    session.expire_if_due(due_by);
                    session.merge(incoming);
                    session
                };
                (Some(old.fingerprint()), !old.is_tombstone(), session)
            }
            Err(_) => {
                let mut session = Session::default();
                session.merge(incoming);
                (None, false, session)
            }
        };
        session.expire_if_due(now_ms);
        let keep = !(session.is_tombstone()
            && session.collectable_at_ms(self.tombstone_grace_ms) <= now_ms);
        let change = if session.is_visible(now_ms) {
            Some(ChangeKind::Updated)
        } else if session.header().evicted {
            old_live.then_some(ChangeKind::Evicted)
        } else {
            old_live.then_some(ChangeKind::Removed)
        };
        let changed = match (found, old_fingerprint) {
            (Ok(slot), Some(old_fingerprint)) if !keep => {
                let (old, _) = slot.remove();
                digest.remove(hash, old_fingerprint);
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.removed(old.len());
                true
            }
            (Ok(mut slot), Some(old_fingerprint)) => {
                let new = packed::encode(key, &session);
                if new == slot.get().packed {
                    return false;
                }
                digest.remove(hash, old_fingerprint);
                digest.add(hash, Packed::parse(&new).fingerprint());
                self.resized(slot.get().len(), new.len());
                slot.get_mut().packed = new;
                if change == Some(ChangeKind::Updated) {
                    self.access.used(slot.get(), hash);
                }
                true
            }
            (Err(vacant), _) if keep => {
                let new = packed::encode(key, &session);
                digest.add(hash, Packed::parse(&new).fingerprint());
                self.added(new.len());
                let slot = Slot::new(new, self.access.fresh());
                let table = vacant.into_table();
                let before = table.capacity();
                table.insert_unique(slot_hash(hash), slot, |s| packed_slot_hash(s));
                if table.capacity() != before {
                    self.table_resized(before, table.capacity());
                }
                self.len.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => false,
        };
        if let Some(kind) = change.filter(|_| changed) {
            self.record(key, kind);
        }
        changed
    }
}
