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
//!
//! Layout: this file holds the store's operations (apply, merge from
//! peers, digests, entries, sweeps); `locking.rs` the partitions and their
//! locks; `merge.rs` the merge of an incoming state into a partition;
//! `reader.rs` the [`StoreReader`] other threads use; `clears.rs` the
//! stamped clears of key ranges; `views.rs` the views
//! of a stored session ([`SessionRef`], [`SessionData`], [`StoredEntry`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

use crate::clock::{Hlc, Stamp};
use crate::digest::{KeyDigest, PartitionDigest, bucket_of};
use crate::packed::{self, Packed};
use crate::partition::{PartitionId, key_hash, partition_of};
use crate::session::{Expiry, Session, Write};
use crate::{Config, Error};

mod access;
mod clears;
mod locking;
mod merge;
mod reader;
mod views;

use access::AccessClock;
use clears::Clears;
use locking::{CacheLine, Partition, Shared, slot_hash};

pub use access::Candidate;
pub use clears::KeyRange;

pub use reader::{NotReplicated, StoreReader};
pub use views::{SessionData, SessionRef, StoredEntry};

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

/// What a node's stored sessions take in memory, bytes: an estimate from
/// the entries' sizes and the tables' capacity, which the benchmark in
/// docs/BENCHMARKS.md compares with the process's resident memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// The packed sessions (keys, stamps, values, tombstones), each as the
    /// allocator holds it.
    pub entries: usize,
    /// The tables' slots, empty ones included.
    pub tables: usize,
}

impl MemoryUse {
    /// Both together.
    pub fn total(&self) -> usize {
        self.entries + self.tables
    }
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

/// A node's sessions. See the [module docs](self).
///
/// One owner changes the store (`&mut self`); [`StoreReader`]s made by
/// [`Store::reader`] read it from any thread at the same time. Each partition
/// has its own lock, held for one table operation at a time, so readers of
/// different partitions never wait for each other and a reader waits for the
/// owner only while it changes that partition.
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
}

/// How a change to a stored session looks to readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The session was created or its visible state may have changed.
    Updated,
    /// The session was deleted or expired.
    Removed,
    /// The session was evicted to keep a node under its memory bound.
    Evicted,
}

/// A change to a stored session, as [`Store::take_changes`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    /// The session's key.
    pub key: Bytes,
    /// What happened to it.
    pub kind: ChangeKind,
}

impl Store {
    /// An empty store with `config`'s partition count and tombstone grace.
    /// The config should have passed [`Config::validate`].
    pub fn new(config: &Config) -> Self {
        assert!(
            config.partition_count.is_power_of_two(),
            "partition count must be a power of two"
        );
        let count = config.partition_count as usize;
        Store {
            shared: Arc::new(Shared {
                partitions: (0..count).map(|_| CacheLine(RwLock::default())).collect(),
                replicas: (0..count).map(|_| AtomicU32::new(0)).collect(),
                partition_count: config.partition_count,
                tombstone_grace_ms: config.tombstone_grace_ms,
                len: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                table_bytes: AtomicUsize::new(0),
                limit: AtomicUsize::new(config.max_memory_bytes),
                other: AtomicUsize::new(0),
                watching: AtomicBool::new(false),
                changes: Mutex::new(Vec::new()),
                clears: Clears::default(),
                access: AccessClock::default(),
            }),
        }
    }

    /// A reader of this store that other threads can use while the owner
    /// keeps changing it.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Records whether the owning node replicates `partition`, which decides
    /// whether [`StoreReader::read_local`] answers for its keys: `replicas`
    /// is the partition's replica count when the node is one of them, 0 when
    /// it is not.
    ///
    /// It is changed under the partition's write lock, so a
    /// [`StoreReader::write_local`] sees either the old replica set and
    /// lands before the change, or the new one.
    pub fn set_replicated(&self, partition: PartitionId, replicas: usize) {
        let replicas = u32::try_from(replicas).unwrap_or(u32::MAX);
        let flag = &self.shared.replicas[partition.0 as usize];
        if flag.load(Ordering::Acquire) != replicas {
            let _locked = self.shared.write(partition);
            flag.store(replicas, Ordering::Release);
        }
    }

    /// Starts or stops recording the changes [`take_changes`](Self::take_changes)
    /// returns. Off by default, so an unwatched store keeps no list.
    pub fn record_changes(&mut self, on: bool) {
        if self.shared.watching.swap(on, Ordering::Relaxed) != on {
            // Whatever is left from before belongs to no current watcher.
            self.take_changes();
        }
    }

    /// The changes recorded since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<KeyChange> {
        std::mem::take(
            &mut *self
                .shared
                .changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.shared.partition_count
    }

    /// Stored entries, tombstones and not-yet-swept expired sessions included.
    pub fn len(&self) -> usize {
        self.shared.len.load(Ordering::Relaxed)
    }

    /// What the stored sessions take in memory, bytes, as
    /// [`MemoryUse`] counts it.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            entries: self.shared.bytes.load(Ordering::Relaxed),
            tables: self.shared.table_bytes.load(Ordering::Relaxed),
        }
    }

    /// Sets the memory bound, bytes (0: none).
    pub fn set_memory_limit(&self, bytes: usize) {
        self.shared.limit.store(bytes, Ordering::Relaxed);
    }

    /// Sets what the node holds besides the stored sessions and their
    /// tables (hints, consensus state), bytes, which counts against the
    /// bound.
    pub fn set_other_memory(&self, bytes: usize) {
        self.shared.other.store(bytes, Ordering::Relaxed);
    }

    /// Whether the node is over its memory bound: what it uses and the
    /// bound, if so.
    pub fn over_limit(&self) -> Option<(usize, usize)> {
        self.shared.over_limit()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stored entries of `partition`, tombstones included.
    pub fn partition_len(&self, partition: PartitionId) -> usize {
        self.shared.read(partition).table.len()
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        partition_of(key_hash(key), self.partition_count())
    }

    /// As [`StoreReader::read`], from the owner.
    pub fn read<R>(
        &self,
        key: &[u8],
        now_ms: u64,
        f: impl FnOnce(SessionRef<'_>) -> R,
    ) -> Option<R> {
        self.shared.read_key(key, key_hash(key), || now_ms, f)
    }

    /// The full replicated state under `key`, tombstones included, for
    /// replication and repair.
    pub fn session(&self, key: &[u8]) -> Option<Session> {
        self.shared.stored(key, |packed| packed.to_session())
    }

    /// The fingerprint of the state under `key` (tombstones included), as
    /// anti-entropy compares it: equal on two replicas exactly when their
    /// stamps are.
    pub fn fingerprint(&self, key: &[u8]) -> Option<u64> {
        self.shared.stored(key, |packed| packed.fingerprint())
    }

    /// [`session`](Self::session) and [`fingerprint`](Self::fingerprint)
    /// of `key`, read together.
    pub fn session_and_fingerprint(&self, key: &[u8]) -> Option<(Session, u64)> {
        self.shared
            .stored(key, |packed| (packed.to_session(), packed.fingerprint()))
    }

    /// Applies a write stamped by its coordinator. Returns whether the stored
    /// state changed (`false` for a duplicate or superseded write).
    ///
    /// # Errors
    /// [`Error::KeyTooLong`]; nothing is stored then.
    pub fn apply(
        &mut self,
        key: &[u8],
        write: &Write,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<bool, Error> {
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
    pub fn put_field(
        &mut self,
        key: &[u8],
        name: Bytes,
        value: Bytes,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<bool, Error> {
        self.apply(key, &Write::PutField { name, value }, stamp, now_ms)
    }

    /// Deletes one field: [`Write::DeleteField`].
    pub fn delete_field(
        &mut self,
        key: &[u8],
        name: Bytes,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<bool, Error> {
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
    pub fn expire_at(
        &mut self,
        key: &[u8],
        at_ms: Option<u64>,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<bool, Error> {
        self.apply(key, &Write::ExpireAt { at_ms }, stamp, now_ms)
    }

    /// Merges a replica's state of `key` (from replication, read repair, a
    /// hint or anti-entropy). Returns whether the stored state changed.
    ///
    /// A stored session whose deadline has passed is expired first (as of the
    /// later of `now_ms` and the incoming newest stamp), so incoming writes
    /// from after the deadline start a new session instead of reviving it;
    /// the result is expired too if due at `now_ms`. A result that is a
    /// collectable tombstone is not kept.
    ///
    /// # Errors
    /// [`Error::KeyTooLong`]; nothing is stored then.
    pub fn merge_remote(
        &mut self,
        key: &[u8],
        incoming: Session,
        now_ms: u64,
    ) -> Result<bool, Error> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        let hash = key_hash(key);
        let partition = partition_of(hash, self.partition_count());
        let mut locked = self.shared.write(partition);
        Ok(self.shared.merge(&mut locked, key, hash, incoming, now_ms))
    }

    /// Drops everything stored in `partition` (after handing it off); returns
    /// how many entries went.
    pub fn drop_partition(&mut self, partition: PartitionId) -> usize {
        let dropped = std::mem::take(&mut *self.shared.write(partition));
        self.shared.table_resized(dropped.table.capacity(), 0);
        self.shared
            .len
            .fetch_sub(dropped.table.len(), Ordering::Relaxed);
        for packed in &dropped.table {
            self.shared.removed(packed.len());
        }
        dropped.table.len()
    }

    /// Calls `f` with every entry of `partition`, tombstones included, in no
    /// particular order. The partition stays locked against changes while
    /// `f` runs.
    pub fn with_entries<R>(
        &self,
        partition: PartitionId,
        f: impl FnOnce(&mut dyn Iterator<Item = StoredEntry<'_>>) -> R,
    ) -> R {
        let partition = self.shared.read(partition);
        f(&mut partition.table.iter().map(|packed| StoredEntry {
            packed: Packed::parse(packed),
        }))
    }

    /// Every entry of `partition`, tombstones included, as replicas exchange them.
    pub fn entries(&self, partition: PartitionId) -> Vec<Entry> {
        self.with_entries(partition, |entries| entries.map(|e| e.to_entry()).collect())
    }

    /// The anti-entropy digest of `partition`, as it is now.
    pub fn digest(&self, partition: PartitionId) -> PartitionDigest {
        self.shared.read(partition).digest.clone()
    }

    /// The digest of `partition` computed afresh from the sessions stored,
    /// to check the one kept current on every change against: they are
    /// equal (the simulator checks it at the end of every run).
    pub fn recompute_digest(&self, partition: PartitionId) -> PartitionDigest {
        let mut digest = PartitionDigest::default();
        self.with_entries(partition, |entries| {
            for entry in entries {
                digest.add(entry.key_hash(), entry.fingerprint());
            }
        });
        digest
    }

    /// The root of [`digest`](Self::digest), without copying the rest.
    pub fn digest_root(&self, partition: PartitionId) -> u64 {
        self.shared.read(partition).digest.root()
    }

    /// The `(key hash, fingerprint)` of every entry in one digest bucket of
    /// `partition` (step 3 of the exchange in [`crate::digest`]).
    pub fn bucket_keys(&self, partition: PartitionId, bucket: u8) -> Vec<KeyDigest> {
        self.with_entries(partition, |entries| {
            entries
                .filter(|e| bucket_of(e.key_hash()) == bucket)
                .map(|e| KeyDigest {
                    key_hash: e.key_hash(),
                    fingerprint: e.fingerprint(),
                })
                .collect()
        })
    }

    /// The entries of `partition` whose key hashes are listed (the answer to a
    /// fetch in the exchange); hashes this store does not hold are skipped.
    pub fn entries_by_hash(&self, partition: PartitionId, key_hashes: &[u64]) -> Vec<Entry> {
        let partition = self.shared.read(partition);
        let mut found = Vec::new();
        for &hash in key_hashes {
            // A table probe by hash visits every key sharing it (collisions included).
            for packed in partition.table.iter_hash(slot_hash(hash)) {
                let packed = Packed::parse(packed);
                if key_hash(packed.key) == hash {
                    found.push(Entry {
                        key: Bytes::copy_from_slice(packed.key),
                        session: packed.to_session(),
                    });
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
        let shared = &*self.shared;
        let grace_ms = shared.tombstone_grace_ms;
        let field_cutoff_ms = now_ms.saturating_sub(grace_ms);
        let mut stats = SweepStats::default();
        let mut locked = shared.write(partition);
        let Partition { table, digest } = &mut *locked;
        table.retain(|slot| {
            let old = Packed::parse(slot);
            let expired = old.deadline_ms().is_some_and(|d| d <= now_ms);
            let stale_field_tombstones = old
                .fields()
                .any(|f| f.value.is_none() && f.stamp.wall_ms() < field_cutoff_ms);
            let maybe_collectable = old.is_tombstone();
            if !(expired || stale_field_tombstones || maybe_collectable) {
                return true;
            }
            let mut session = old.to_session();
            if session.expire_if_due(now_ms) {
                stats.expired += 1;
                shared.record(old.key, ChangeKind::Removed);
            }
            stats.field_tombstones_dropped += session.drop_field_tombstones_before(field_cutoff_ms);
            let hash = key_hash(old.key);
            let old_fingerprint = old.fingerprint();
            if session.is_tombstone() && session.collectable_at_ms(grace_ms) <= now_ms {
                digest.remove(hash, old_fingerprint);
                stats.collected += 1;
                shared.removed(slot.len());
                return false;
            }
            let new = packed::encode(old.key, &session);
            if new != slot.packed {
                digest.remove(hash, old_fingerprint);
                digest.add(hash, Packed::parse(&new).fingerprint());
                shared.resized(slot.len(), new.len());
                slot.packed = new;
            }
            true
        });
        shared.len.fetch_sub(stats.collected, Ordering::Relaxed);
        stats
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::clock::NodeId;
    use crate::testing::{arb_write, stamp};

    const GRACE_MS: u64 = 10_000;

    fn store() -> Store {
        Store::new(&Config {
            partition_count: 16,
            tombstone_grace_ms: GRACE_MS,
            ..Config::default()
        })
    }

    fn value(v: &'static str) -> Vec<(Bytes, Bytes)> {
        vec![(Bytes::new(), Bytes::from_static(v.as_bytes()))]
    }

    fn expiring_at(ms: u64) -> Expiry {
        Expiry {
            expires_at_ms: Some(ms),
            max_idle_ms: None,
        }
    }

    /// The digest a store would have if it were built from scratch.
    fn recomputed_digest(store: &Store, partition: PartitionId) -> PartitionDigest {
        store.recompute_digest(partition)
    }

    #[test]
    fn reads_see_writes_and_absent_keys_are_absent() {
        let mut s = store();
        assert!(
            s.put(b"k", value("v"), Expiry::default(), stamp(1, 1), 1)
                .unwrap()
        );
        let got = s.read(b"k", 2, |got| {
            assert_eq!(got.key(), b"k");
            got.fields()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect::<Vec<_>>()
        });
        assert_eq!(got, Some(vec![(b"".to_vec(), b"v".to_vec())]));
        assert!(s.read(b"other", 2, |_| ()).is_none());
        assert_eq!(s.len(), 1);
        assert!(
            !s.put(b"k", value("v"), Expiry::default(), stamp(1, 1), 3)
                .unwrap(),
            "a duplicate changes nothing"
        );
    }

    #[test]
    fn a_reader_on_another_thread_sees_the_owners_writes_for_replicated_partitions_only() {
        let mut s = store();
        let reader = s.reader();
        let p = s.partition_of(b"k");
        s.put(b"k", value("v1"), Expiry::default(), stamp(1, 1), 1)
            .unwrap();
        let read = |reader: StoreReader| {
            std::thread::spawn(move || {
                reader.read_local(
                    b"k",
                    |n| n == 1,
                    || 2,
                    |got| got.field(b"").map(<[u8]>::to_vec),
                )
            })
            .join()
            .unwrap()
        };
        assert_eq!(read(reader.clone()), Err(NotReplicated));
        s.set_replicated(p, 3);
        assert_eq!(
            read(reader.clone()),
            Err(NotReplicated),
            "one of three copies is not enough"
        );
        s.set_replicated(p, 1);
        assert_eq!(read(reader.clone()), Ok(Some(Some(b"v1".to_vec()))));
        s.put(b"k", value("v2"), Expiry::default(), stamp(2, 1), 2)
            .unwrap();
        assert_eq!(read(reader.clone()), Ok(Some(Some(b"v2".to_vec()))));
        s.delete(b"k", stamp(3, 1), 3).unwrap();
        assert_eq!(read(reader), Ok(None), "a deleted session reads as absent");
    }

    #[test]
    fn records_visible_changes_only_while_watched() {
        let mut s = store();
        s.put(b"a", value("1"), expiring_at(100), stamp(1, 1), 1)
            .unwrap();
        assert!(s.take_changes().is_empty(), "nothing recorded unwatched");
        s.record_changes(true);
        let change = |key: &[u8], kind| KeyChange {
            key: Bytes::copy_from_slice(key),
            kind,
        };
        s.put(b"b", value("1"), Expiry::default(), stamp(2, 1), 2)
            .unwrap();
        s.put(b"b", value("1"), Expiry::default(), stamp(2, 1), 2)
            .unwrap();
        s.delete(b"b", stamp(3, 1), 3).unwrap();
        s.delete(b"b", stamp(4, 1), 4).unwrap();
        s.sweep(s.partition_of(b"a"), 100);
        assert_eq!(
            s.take_changes(),
            vec![
                change(b"b", ChangeKind::Updated),
                change(b"b", ChangeKind::Removed),
                change(b"a", ChangeKind::Removed),
            ],
            "a duplicate, and a delete of a deleted session, change nothing visible"
        );
        assert!(s.take_changes().is_empty());
    }

    #[test]
    fn refuses_an_oversized_key_and_stores_nothing() {
        let mut s = store();
        let key = vec![b'k'; MAX_KEY_LEN + 1];
        let err = s
            .put(&key, value("v"), Expiry::default(), stamp(1, 1), 1)
            .unwrap_err();
        assert_eq!(err, Error::KeyTooLong { len: 513, max: 512 });
        assert!(s.is_empty());
        assert!(
            s.put(
                &key[..MAX_KEY_LEN],
                value("v"),
                Expiry::default(),
                stamp(1, 1),
                1
            )
            .unwrap()
        );
    }

    #[test]
    fn an_expired_session_is_invisible_at_once_and_reclaimed_by_a_sweep() {
        let mut s = store();
        s.put(b"k", value("v"), expiring_at(1_000), stamp(10, 1), 10)
            .unwrap();
        assert!(s.read(b"k", 999, |_| ()).is_some());
        assert!(
            s.read(b"k", 1_000, |_| ()).is_none(),
            "invisible the moment its deadline comes, before any sweep"
        );
        let p = s.partition_of(b"k");
        let stats = s.sweep(p, 1_000);
        assert_eq!(stats.expired, 1);
        assert_eq!(s.len(), 1, "kept as a tombstone through the grace period");
        assert_eq!(s.sweep(p, 1_000 + GRACE_MS).collected, 1);
        assert!(s.is_empty());
        assert_eq!(s.digest(p), PartitionDigest::default());
    }

    #[test]
    fn a_deleted_session_cannot_come_back_within_the_window_and_tombstones_do_not_pile_up() {
        const DEADLINE: u64 = 50_000;
        let mut s = store();
        let mut stale = store();
        // The session, with a deadline, reaches both replicas; the stale one also
        // takes a late field write. Then the session is deleted (logout) at 1,000.
        for replica in [&mut s, &mut stale] {
            replica
                .put(b"k", value("v"), expiring_at(DEADLINE), stamp(100, 1), 100)
                .unwrap();
        }
        stale
            .put_field(
                b"k",
                Bytes::from_static(b"cart"),
                Bytes::from_static(b"1"),
                stamp(900, 2),
                900,
            )
            .unwrap();
        s.delete(b"k", stamp(1_000, 1), 1_000).unwrap();
        let p = s.partition_of(b"k");
        let stale_state = stale.session(b"k").unwrap();

        // Throughout the window (until the covered deadline plus grace), the stale
        // state merges in without bringing the session back, sweeps or not.
        for now in [
            1_001,
            20_000,
            DEADLINE - 1,
            DEADLINE,
            DEADLINE + GRACE_MS - 1,
        ] {
            s.sweep(p, now);
            s.merge_remote(b"k", stale_state.clone(), now).unwrap();
            assert!(s.read(b"k", now, |_| ()).is_none(), "resurrected at {now}");
            assert_eq!(s.len(), 1, "the tombstone is kept at {now}");
        }
        // After it, the tombstone goes, and the stale state cannot revive the
        // session either: it has expired by its own deadline.
        assert_eq!(s.sweep(p, DEADLINE + GRACE_MS).collected, 1);
        assert!(s.is_empty());
        s.merge_remote(b"k", stale_state, DEADLINE + GRACE_MS)
            .unwrap();
        assert!(s.read(b"k", DEADLINE + GRACE_MS, |_| ()).is_none());
        assert!(s.is_empty(), "an expired stale state is not even stored");

        // Many logouts leave no tombstones behind once their window has passed.
        for i in 0..1_000u64 {
            let key = i.to_le_bytes();
            s.put(&key, value("v"), expiring_at(DEADLINE), stamp(100, 1), 100)
                .unwrap();
            s.delete(&key, stamp(200 + i, 1), 200 + i).unwrap();
        }
        assert_eq!(s.len(), 1_000);
        let now = DEADLINE + GRACE_MS;
        let collected: usize = (0..s.partition_count())
            .map(|p| s.sweep(PartitionId(p), now).collected)
            .sum();
        assert_eq!(collected, 1_000);
        assert!(s.is_empty());
    }

    #[test]
    fn deleted_field_markers_are_dropped_after_the_grace_period() {
        let mut s = store();
        s.put(b"k", value("v"), Expiry::default(), stamp(1, 1), 1)
            .unwrap();
        s.delete_field(b"k", Bytes::from_static(b"gone"), stamp(2, 1), 2)
            .unwrap();
        let p = s.partition_of(b"k");
        assert_eq!(s.sweep(p, 2 + GRACE_MS - 1).field_tombstones_dropped, 0);
        assert_eq!(s.sweep(p, 2 + GRACE_MS + 1).field_tombstones_dropped, 1);
        assert_eq!(s.session(b"k").unwrap().registers().len(), 1);
        assert_eq!(s.digest(p), recomputed_digest(&s, p));
    }

    #[test]
    fn entries_by_hash_finds_exactly_the_listed_keys() {
        let mut s = store();
        for i in 0..200u32 {
            s.put(
                &i.to_le_bytes(),
                value("v"),
                Expiry::default(),
                stamp(1, 1),
                1,
            )
            .unwrap();
        }
        let key = 7u32.to_le_bytes();
        let p = s.partition_of(&key);
        let found = s.entries_by_hash(p, &[key_hash(&key), 12345]);
        assert_eq!(found.len(), 1);
        assert_eq!(&found[0].key[..], &key);
        assert_eq!(found[0].session, s.session(&key).unwrap());
    }

    #[test]
    fn local_writes_go_only_to_partitions_the_node_replicates_alone() {
        let mut s = store();
        s.record_changes(true);
        let reader = s.reader();
        let clock = Hlc::new(NodeId(9), 500);
        let put = Write::Put {
            fields: value("v"),
            expiry: Expiry::default(),
        };
        let p = s.partition_of(b"k");
        for replicas in [0, 2, 3] {
            s.set_replicated(p, replicas);
            assert_eq!(
                reader.write_local(b"k", &put, &clock, 5),
                Err(NotReplicated)
            );
        }
        assert!(s.is_empty(), "refused writes store nothing");
        s.set_replicated(p, 1);
        let too_long = vec![b'k'; MAX_KEY_LEN + 1];
        if s.partition_of(&too_long) == p {
            assert_eq!(
                reader.write_local(&too_long, &put, &clock, 5),
                Err(NotReplicated)
            );
        }
        let (stamp, changed) = reader.write_local(b"k", &put, &clock, 5).unwrap();
        assert!(changed);
        assert_eq!(stamp.node, NodeId(9));
        assert_eq!(stamp.wall_ms(), 5);
        assert_eq!(s.len(), 1);
        assert_eq!(s.session(b"k"), Some(Session::from_write(&put, stamp)));
        assert_eq!(s.digest(p), recomputed_digest(&s, p));
        assert_eq!(
            s.take_changes(),
            vec![KeyChange {
                key: Bytes::from_static(b"k"),
                kind: ChangeKind::Updated
            }]
        );
        // The same clock orders the owner's later writes after it.
        let (logout, _) = reader.write_local(b"k", &Write::Delete, &clock, 1).unwrap();
        assert!(
            logout > stamp,
            "a later stamp even when the wall clock steps back"
        );
        assert!(s.read(b"k", 5, |_| ()).is_none());
        assert_eq!(s.take_changes()[0].kind, ChangeKind::Removed);
    }

    #[test]
    fn local_writes_from_threads_and_owner_merges_keep_the_digests_exact() {
        let mut s = store();
        for p in 0..s.partition_count() {
            s.set_replicated(PartitionId(p), 1);
        }
        let clock = Arc::new(Hlc::new(NodeId(1), 500));
        std::thread::scope(|scope| {
            for t in 0..2u64 {
                let (reader, clock) = (s.reader(), Arc::clone(&clock));
                scope.spawn(move || {
                    for i in 0..2_000u64 {
                        let key = (i % 300).to_le_bytes();
                        let write = if i % 7 == 0 {
                            Write::Delete
                        } else {
                            Write::PutField {
                                name: Bytes::from(vec![b'a' + u8::try_from(t).unwrap()]),
                                value: Bytes::from(i.to_le_bytes().to_vec()),
                            }
                        };
                        reader.write_local(&key, &write, &clock, 100 + i).unwrap();
                    }
                });
            }
            for i in 0..2_000u64 {
                let key = (i % 300).to_le_bytes();
                s.put_field(
                    &key,
                    Bytes::from_static(b"o"),
                    Bytes::new(),
                    stamp(50 + i, 2),
                    100 + i,
                )
                .unwrap();
            }
        });
        let mut entries = 0;
        for p in (0..s.partition_count()).map(PartitionId) {
            assert_eq!(s.digest(p), recomputed_digest(&s, p));
            entries += s.partition_len(p);
        }
        assert_eq!(s.len(), entries);
    }

    /// What the stored entries take, counted afresh.
    fn recounted_bytes(store: &Store) -> usize {
        (0..store.partition_count())
            .map(|p| {
                let partition = store.shared.read(PartitionId(p));
                partition
                    .table
                    .iter()
                    .map(|packed| locking::entry_bytes(packed.len()))
                    .sum::<usize>()
            })
            .sum()
    }

    /// What the tables' slots take, counted afresh from their capacity.
    fn recounted_table_bytes(store: &Store) -> usize {
        (0..store.partition_count())
            .map(|p| locking::table_bytes(store.shared.read(PartitionId(p)).table.capacity()))
            .sum()
    }

    fn arb_op() -> impl Strategy<Value = (u8, Option<Write>, u64, u64)> {
        // (key, write or sweep, ms, node)
        (
            0u8..6,
            prop::option::weighted(0.9, arb_write()),
            0u64..60_000,
            1u64..4,
        )
    }

    /// What the store keeps after merging `incoming` into `before` at
    /// `now_ms`, by the rules [`Store::merge_remote`] states, with a full
    /// unpack and merge: `None` when the result is a collectable tombstone.
    fn full_merge(before: Option<Session>, incoming: &Session, now_ms: u64) -> Option<Session> {
        let due_by = now_ms.max(incoming.newest_stamp().wall_ms());
        let mut merged = before.unwrap_or_default();
        merged.expire_if_due(due_by);
        merged.merge(incoming.clone());
        merged.expire_if_due(now_ms);
        let collectable = merged.is_tombstone() && merged.collectable_at_ms(GRACE_MS) <= now_ms;
        (!collectable).then_some(merged)
    }

    proptest! {
        /// A write that clears past everything stored (the path that skips
        /// unpacking the stored fields) stores exactly what a full unpack
        /// and merge would.
        #[test]
        fn a_superseding_write_stores_what_a_full_merge_would(
            history in prop::collection::vec((arb_write(), 0u64..60_000), 1..12),
            last in arb_write(),
            now in 0u64..120_000,
        ) {
            let mut s = store();
            for (i, (write, ms)) in history.iter().enumerate() {
                s.apply(b"k", write, stamp(*ms, i as u64 + 1), *ms).unwrap();
            }
            let before = s.session(b"k");
            // Later than every stamp in the history.
            let incoming = Session::from_write(&last, stamp(70_000, 99));
            let expected = full_merge(before, &incoming, now);
            s.merge_remote(b"k", incoming, now).unwrap();
            prop_assert_eq!(s.session(b"k"), expected);
        }

        /// A one-field write (the path that sets the field in the packed
        /// bytes) stores exactly what a full unpack and merge would, at any
        /// stamp: older or newer than the stored ones, before or after the
        /// deadline. The digest follows.
        #[test]
        fn a_field_write_stores_what_a_full_merge_would(
            history in prop::collection::vec((arb_write(), 0u64..60_000), 1..12),
            name in prop::sample::select(&["", "user", "cart", "zz"][..]),
            value in prop::sample::select(&["a", "ccc"][..]),
            at in 0u64..70_000,
            node in 1u64..14,
            now in 0u64..120_000,
        ) {
            let mut s = store();
            for (i, (write, ms)) in history.iter().enumerate() {
                s.apply(b"k", write, stamp(*ms, i as u64 + 1), *ms).unwrap();
            }
            let before = s.session(b"k");
            let write = Write::PutField {
                name: Bytes::from_static(name.as_bytes()),
                value: Bytes::from_static(value.as_bytes()),
            };
            let incoming = Session::from_write(&write, stamp(at, node));
            let expected = full_merge(before.clone(), &incoming, now);
            let changed = s.merge_remote(b"k", incoming, now).unwrap();
            let got = s.session(b"k");
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(changed, got != before);
            let p = s.partition_of(b"k");
            prop_assert_eq!(s.digest(p), recomputed_digest(&s, p));
        }

        /// The incrementally kept digest always equals one rebuilt from
        /// scratch, and the memory count the entries' sizes.
        #[test]
        fn digests_and_memory_stay_exact(ops in prop::collection::vec(arb_op(), 0..60)) {
            let mut s = store();
            for (i, (key, write, ms, node)) in ops.into_iter().enumerate() {
                let key = [key];
                match write {
                    Some(write) => {
                        // Some arrive late: older than the grace period.
                        let now = ms + (node - 1) * 15_000;
                        s.apply(&key, &write, stamp(ms, node * 1_000 + i as u64), now).unwrap();
                    }
                    None => {
                        s.sweep(s.partition_of(&key), ms);
                    }
                }
            }
            for p in 0..s.partition_count() {
                prop_assert_eq!(s.digest(PartitionId(p)), recomputed_digest(&s, PartitionId(p)));
            }
            prop_assert_eq!(s.memory().entries, recounted_bytes(&s));
            prop_assert_eq!(s.memory().tables, recounted_table_bytes(&s));
            let p = s.partition_of(&[0]);
            s.drop_partition(p);
            prop_assert_eq!(s.memory().entries, recounted_bytes(&s));
            prop_assert_eq!(s.memory().tables, recounted_table_bytes(&s));
        }

        /// Two stores that take the same writes in opposite orders hold the
        /// same sessions and digests: at once when no deadline passes, and
        /// after anti-entropy rounds when deadlines do.
        #[test]
        fn stores_converge_whatever_the_order(
            writes in prop::collection::vec((0u8..4, arb_write(), 0u64..60_000), 0..30),
            expiry in any::<bool>(),
        ) {
            let stamped: Vec<_> = writes.into_iter().enumerate()
                .map(|(i, (key, w, ms))| {
                    let w = match w {
                        Write::Put { fields, .. } if !expiry => Write::Put { fields, expiry: Expiry::default() },
                        Write::ExpireAt { .. } | Write::MaxIdle { .. } if !expiry => Write::Touch,
                        w => w,
                    };
                    ([key], w, stamp(ms, i as u64 + 1), ms)
                }).collect();
            let mut a = store();
            let mut c = store();
            for (key, w, s, ms) in &stamped {
                a.apply(key, w, *s, *ms).unwrap();
            }
            for (key, w, s, ms) in stamped.iter().rev() {
                c.apply(key, w, *s, *ms).unwrap();
            }
            if expiry {
                // Anti-entropy as the runtime runs it: sweep, then exchange, until quiet.
                // Which tombstone stamp a replica chose depends on when it saw the
                // deadline pass, so the exchange may take more than one round.
                let now = 60_000;
                for _ in 0..4 {
                    for p in 0..a.partition_count() {
                        a.sweep(PartitionId(p), now);
                        c.sweep(PartitionId(p), now);
                        let from_a: Vec<Entry> = a.entries(PartitionId(p));
                        let from_c: Vec<Entry> = c.entries(PartitionId(p));
                        for e in from_a {
                            c.merge_remote(&e.key, e.session, now).unwrap();
                        }
                        for e in from_c {
                            a.merge_remote(&e.key, e.session, now).unwrap();
                        }
                    }
                }
            }
            for p in 0..a.partition_count() {
                prop_assert_eq!(a.digest(PartitionId(p)), c.digest(PartitionId(p)));
            }
            for key in 0u8..4 {
                prop_assert_eq!(a.session(&[key]), c.session(&[key]));
            }
        }
    }
}
