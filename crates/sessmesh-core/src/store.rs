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
pub(crate) use locking::entry_bytes as allocation_bytes;
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
mod tests;
