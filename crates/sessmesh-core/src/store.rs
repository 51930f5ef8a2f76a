//! A node's sessions, grouped by partition.
//!
//! The [`Store`] applies stamped writes and merges remote states, answers reads
//! as of a `now` the caller passes in, keeps each partition's anti-entropy
//! digest current on every change, and reclaims expired sessions and old
//! tombstones when the driver sweeps it. It issues no stamps (that is the
//! coordinator's [`crate::Hlc`]) and reads no clock.
//!
//! Sessions are kept packed (see `packed.rs`): one allocation per session,
//! reads borrow from it. A change unpacks the session, merges, and packs it
//! again; an unchanged result is not rewritten and does not touch the digest.

use bytes::Bytes;
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

use crate::clock::Stamp;
use crate::digest::{KeyDigest, PartitionDigest, bucket_of};
use crate::packed::{self, Packed};
use crate::partition::{PartitionId, key_hash, partition_of};
use crate::session::{Expiry, Session, Write};
use crate::{Config, Error};

/// The longest key a session may have, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// A session and its key, as replicas exchange them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The session's key.
    pub key: Bytes,
    /// Its full replicated state, tombstones included.
    pub session: Session,
}

/// What one sweep of a partition reclaimed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Sessions whose deadline had passed, turned into tombstones.
    pub expired: usize,
    /// Tombstones dropped because nothing they hide can still be live.
    pub collected: usize,
    /// Deleted-field markers dropped after the grace period.
    pub field_tombstones_dropped: usize,
}

#[derive(Debug, Default)]
struct Partition {
    /// Packed sessions, found by the key hash with its halves swapped (the
    /// low bits pick the partition, so they cannot also pick the slot).
    entries: HashTable<Box<[u8]>>,
    digest: PartitionDigest,
}

fn slot_hash(key_hash: u64) -> u64 {
    key_hash.rotate_left(32)
}

fn packed_slot_hash(packed: &[u8]) -> u64 {
    slot_hash(key_hash(packed::key_of(packed)))
}

/// A node's sessions. See the [module docs](self).
#[derive(Debug)]
pub struct Store {
    partitions: Box<[Partition]>,
    partition_count: u32,
    tombstone_grace_ms: u64,
    len: usize,
}

impl Store {
    /// An empty store with `config`'s partition count and tombstone grace.
    /// The config should have passed [`Config::validate`].
    pub fn new(config: &Config) -> Self {
        assert!(config.partition_count.is_power_of_two(), "partition count must be a power of two");
        Store {
            partitions: (0..config.partition_count).map(|_| Partition::default()).collect(),
            partition_count: config.partition_count,
            tombstone_grace_ms: config.tombstone_grace_ms,
            len: 0,
        }
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }

    /// Stored entries, tombstones and not-yet-swept expired sessions included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        partition_of(key_hash(key), self.partition_count)
    }

    fn find(&self, key: &[u8]) -> Option<&[u8]> {
        let hash = key_hash(key);
        let partition = &self.partitions[partition_of(hash, self.partition_count).0 as usize];
        partition.entries.find(slot_hash(hash), |packed| packed::key_of(packed) == key).map(|b| &**b)
    }

    /// The session stored under `key` as a reader at `now_ms` sees it: `None`
    /// when absent, deleted or expired.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<SessionRef<'_>> {
        let packed = Packed::parse(self.find(key)?);
        packed.is_visible(now_ms).then_some(SessionRef { packed })
    }

    /// The full replicated state under `key`, tombstones included, for
    /// replication and repair.
    pub fn session(&self, key: &[u8]) -> Option<Session> {
        self.find(key).map(|packed| Packed::parse(packed).to_session())
    }

    /// Applies a write stamped by its coordinator. Returns whether the stored
    /// state changed (`false` for a duplicate or superseded write).
    ///
    /// # Errors
    /// [`Error::KeyTooLong`]; nothing is stored then.
    pub fn apply(&mut self, key: &[u8], write: &Write, stamp: Stamp, now_ms: u64) -> Result<bool, Error> {
        self.merge_remote(key, Session::from_write(write, stamp), now_ms)
    }

    /// Replaces the whole session: [`Write::Put`].
    pub fn put(
        &mut self,
        key: &[u8],
        fields: Vec<(Bytes, Bytes)>,
        expiry: Expiry,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<bool, Error> {
        self.apply(key, &Write::Put { fields, expiry }, stamp, now_ms)
    }

    /// Sets one field: [`Write::PutField`].
    pub fn put_field(&mut self, key: &[u8], name: Bytes, value: Bytes, stamp: Stamp, now_ms: u64) -> Result<bool, Error> {
        self.apply(key, &Write::PutField { name, value }, stamp, now_ms)
    }

    /// Deletes one field: [`Write::DeleteField`].
    pub fn delete_field(&mut self, key: &[u8], name: Bytes, stamp: Stamp, now_ms: u64) -> Result<bool, Error> {
        self.apply(key, &Write::DeleteField { name }, stamp, now_ms)
    }

    /// Deletes the session, leaving a tombstone: [`Write::Delete`].
    pub fn delete(&mut self, key: &[u8], stamp: Stamp, now_ms: u64) -> Result<bool, Error> {
        self.apply(key, &Write::Delete, stamp, now_ms)
    }

    /// Marks activity, extending a sliding expiry: [`Write::Touch`].
    pub fn touch(&mut self, key: &[u8], stamp: Stamp, now_ms: u64) -> Result<bool, Error> {
        self.apply(key, &Write::Touch, stamp, now_ms)
    }

    /// Sets or clears the absolute deadline: [`Write::ExpireAt`].
    pub fn expire_at(&mut self, key: &[u8], at_ms: Option<u64>, stamp: Stamp, now_ms: u64) -> Result<bool, Error> {
        self.apply(key, &Write::ExpireAt { at_ms }, stamp, now_ms)
    }

    /// Merges a replica's state of `key` (from replication, read repair, a
    /// hint or anti-entropy). Returns whether the stored state changed.
    ///
    /// A stored session whose deadline has passed is expired first (at the
    /// later of `now_ms` and the incoming newest stamp), so incoming writes
    /// from after the deadline start a new session instead of reviving it.
    /// A result that is a collectable tombstone is not kept.
    ///
    /// # Errors
    /// [`Error::KeyTooLong`]; nothing is stored then.
    pub fn merge_remote(&mut self, key: &[u8], incoming: Session, now_ms: u64) -> Result<bool, Error> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLong { len: key.len(), max: MAX_KEY_LEN });
        }
        let grace_ms = self.tombstone_grace_ms;
        let hash = key_hash(key);
        let partition = &mut self.partitions[partition_of(hash, self.partition_count).0 as usize];
        let expire_at_ms = now_ms.max(incoming.newest_stamp().wall_ms());
        let found = partition.entries.find_entry(slot_hash(hash), |packed| packed::key_of(packed) == key);
        match found {
            Ok(mut slot) => {
                let old = Packed::parse(slot.get());
                let mut session = old.to_session();
                session.expire_if_due(expire_at_ms);
                session.merge(incoming);
                let old_fingerprint = old.fingerprint();
                if session.is_tombstone() && session.collectable_at_ms(grace_ms) <= now_ms {
                    slot.remove();
                    partition.digest.remove(hash, old_fingerprint);
                    self.len -= 1;
                    return Ok(true);
                }
                let new = packed::encode(key, &session);
                if new == *slot.get() {
                    return Ok(false);
                }
                partition.digest.remove(hash, old_fingerprint);
                partition.digest.add(hash, Packed::parse(&new).fingerprint());
                *slot.get_mut() = new;
                Ok(true)
            }
            Err(vacant) => {
                let mut session = Session::default();
                session.merge(incoming);
                session.expire_if_due(expire_at_ms);
                if session.is_tombstone() && session.collectable_at_ms(grace_ms) <= now_ms {
                    return Ok(false);
                }
                let new = packed::encode(key, &session);
                partition.digest.add(hash, Packed::parse(&new).fingerprint());
                vacant.into_table().insert_unique(slot_hash(hash), new, |p| packed_slot_hash(p));
                self.len += 1;
                Ok(true)
            }
        }
    }

    /// Every entry of `partition`, tombstones included, in no particular order.
    pub fn entries(&self, partition: PartitionId) -> impl Iterator<Item = StoredEntry<'_>> {
        self.partitions[partition.0 as usize].entries.iter().map(|packed| StoredEntry { packed: Packed::parse(packed) })
    }

    /// The anti-entropy digest of `partition`.
    pub fn digest(&self, partition: PartitionId) -> &PartitionDigest {
        &self.partitions[partition.0 as usize].digest
    }

    /// The `(key hash, fingerprint)` of every entry in one digest bucket of
    /// `partition` (step 3 of the exchange in [`crate::digest`]).
    pub fn bucket_keys(&self, partition: PartitionId, bucket: u8) -> Vec<KeyDigest> {
        self.entries(partition)
            .filter(|e| bucket_of(e.key_hash()) == bucket)
            .map(|e| KeyDigest { key_hash: e.key_hash(), fingerprint: e.fingerprint() })
            .collect()
    }

    /// The entries of `partition` whose key hashes are listed (the answer to a
    /// fetch in the exchange); hashes this store does not hold are skipped.
    pub fn entries_by_hash(&self, partition: PartitionId, key_hashes: &[u64]) -> Vec<Entry> {
        let partition_store = &self.partitions[partition.0 as usize];
        let mut found = Vec::new();
        for &hash in key_hashes {
            // A table probe by hash visits every key sharing it (collisions included).
            for packed in partition_store.entries.iter_hash(slot_hash(hash)) {
                let packed = Packed::parse(packed);
                if key_hash(packed.key) == hash {
                    found.push(Entry { key: Bytes::copy_from_slice(packed.key), session: packed.to_session() });
                }
            }
        }
        found
    }

    /// Expires sessions whose deadline has passed, drops tombstones that can
    /// no longer hide anything, and drops deleted-field markers older than the
    /// grace period, in one partition. The driver calls it for each partition
    /// in turn, so the work is spread out.
    pub fn sweep(&mut self, partition: PartitionId, now_ms: u64) -> SweepStats {
        let grace_ms = self.tombstone_grace_ms;
        let field_cutoff_ms = now_ms.saturating_sub(grace_ms);
        let Partition { entries, digest } = &mut self.partitions[partition.0 as usize];
        let mut stats = SweepStats::default();
        entries.retain(|slot| {
            let old = Packed::parse(slot);
            let expired = old.deadline_ms().is_some_and(|d| d <= now_ms);
            let stale_field_tombstones =
                old.fields().any(|f| f.value.is_none() && f.stamp.wall_ms() < field_cutoff_ms);
            let maybe_collectable = old.is_tombstone();
            if !(expired || stale_field_tombstones || maybe_collectable) {
                return true;
            }
            let mut session = old.to_session();
            stats.expired += usize::from(session.expire_if_due(now_ms));
            stats.field_tombstones_dropped += session.drop_field_tombstones_before(field_cutoff_ms);
            let hash = key_hash(old.key);
            let old_fingerprint = old.fingerprint();
            if session.is_tombstone() && session.collectable_at_ms(grace_ms) <= now_ms {
                digest.remove(hash, old_fingerprint);
                stats.collected += 1;
                return false;
            }
            let new = packed::encode(old.key, &session);
            if new != *slot {
                digest.remove(hash, old_fingerprint);
                digest.add(hash, Packed::parse(&new).fingerprint());
                *slot = new;
            }
            true
        });
        self.len -= stats.collected;
        stats
    }
}

/// A session as a reader sees it, borrowed from the [`Store`].
#[derive(Clone, Debug)]
pub struct SessionRef<'a> {
    packed: Packed<'a>,
}

impl<'a> SessionRef<'a> {
    /// The session's key.
    pub fn key(&self) -> &'a [u8] {
        self.packed.key
    }

    /// The session's fields, in name order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.packed.fields().filter_map(|f| Some((f.name, f.value?)))
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

/// One stored entry, as [`Store::entries`] yields it.
#[derive(Clone, Debug)]
pub struct StoredEntry<'a> {
    packed: Packed<'a>,
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
        Entry { key: Bytes::copy_from_slice(self.packed.key), session: self.session() }
    }
}
