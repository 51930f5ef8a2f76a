//! The store's partitions and their locks: each partition's table and
//! digest behind its own lock, on its own cache lines, shared by the owner
//! and its readers, with the bookkeeping every change updates.

use super::*;

/// The packed sessions of one partition, found by the key hash with its
/// halves swapped (the low bits pick the partition, so they cannot also pick
/// the slot).
pub(super) type Table = HashTable<Slot>;

/// One stored session: its packed bytes, and what the eviction policy
/// knows of its use (see `access.rs`), which readers update under the
/// partition's read lock.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) packed: Box<[u8]>,
    pub(super) access: AtomicU32,
}

impl Slot {
    pub(super) fn new(packed: Box<[u8]>, access: u32) -> Slot {
        Slot {
            packed,
            access: AtomicU32::new(access),
        }
    }
}

impl std::ops::Deref for Slot {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.packed
    }
}

pub(super) fn slot_hash(key_hash: u64) -> u64 {
    key_hash.rotate_left(32)
}

pub(super) fn packed_slot_hash(packed: &[u8]) -> u64 {
    slot_hash(key_hash(packed::key_of(packed)))
}

pub(super) fn find<'t>(table: &'t Table, hash: u64, key: &[u8]) -> Option<&'t Slot> {
    table.find(slot_hash(hash), |slot| packed::key_of(slot) == key)
}

/// Its own cache lines (128 bytes: two 64-byte lines, for CPUs that fetch
/// them in pairs): readers of neighbouring partitions on different cores do
/// not contend for the line holding the locks they take.
#[derive(Debug)]
#[repr(align(128))]
pub(super) struct CacheLine<T>(pub(super) T);

/// One partition's sessions and their anti-entropy digest, changed together
/// under the partition's lock.
#[derive(Debug, Default)]
pub(super) struct Partition {
    pub(super) table: Table,
    pub(super) digest: PartitionDigest,
}

/// What the [`Store`] shares with its [`StoreReader`]s: each partition behind
/// its own lock, whether the owning node replicates it, and the bookkeeping
/// every change updates (from the owner, or from a reader's
/// [`StoreReader::write_local`]).
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) partitions: Box<[CacheLine<RwLock<Partition>>]>,
    /// Per partition: how many replicas it has when the owning node is one
    /// of them; 0 when it is not. Changed under the partition's write lock.
    pub(super) replicas: Box<[AtomicU32]>,
    pub(super) partition_count: u32,
    pub(super) tombstone_grace_ms: u64,
    /// Stored entries, tombstones included.
    pub(super) len: AtomicUsize,
    /// What the stored entries take, bytes: each one's allocation
    /// ([`entry_bytes`]), the tables' slots not included.
    pub(super) bytes: AtomicUsize,
    /// What the tables' slots take, bytes, kept as they grow.
    pub(super) table_bytes: AtomicUsize,
    /// The node's memory bound, bytes (0: none), and what it holds besides
    /// the sessions and their tables (hints, consensus state), as the node
    /// last counted it: a write that adds is refused over the bound.
    pub(super) limit: AtomicUsize,
    pub(super) other: AtomicUsize,
    /// Whether someone watches the changes, which are then recorded.
    pub(super) watching: AtomicBool,
    pub(super) changes: Mutex<Vec<KeyChange>>,
    /// The clears of key ranges kept (see `clears.rs`).
    pub(super) clears: Clears,
    /// The clock and policy of the sessions' access words (`access.rs`).
    pub(super) access: AccessClock,
}

/// What one stored entry of `packed_len` bytes takes from the allocator:
/// its bytes and the allocator's header, rounded to its 16-byte chunks (at
/// least 32), as glibc's malloc and most others allocate.
pub(crate) fn entry_bytes(packed_len: usize) -> usize {
    ((packed_len + 8 + 15) & !15).max(32)
}

/// What a table of `capacity` takes in slots: a table holds 7/8 of its
/// slots (all but one, when it is tiny).
pub(super) fn table_bytes(capacity: usize) -> usize {
    let slots = match capacity {
        0 => 0,
        small @ 1..7 => small + 1,
        capacity => capacity / 7 * 8,
    };
    slots * SLOT_BYTES
}

/// What one table slot takes: the boxed entry's pointer and length, its
/// access word, and the table's control byte.
pub(super) const SLOT_BYTES: usize = size_of::<Slot>() + 1;

impl Shared {
    /// Whether the node is over its memory bound: what it uses and the
    /// bound, if so.
    pub(super) fn over_limit(&self) -> Option<(usize, usize)> {
        let limit = self.limit.load(Ordering::Relaxed);
        let used = self.bytes.load(Ordering::Relaxed)
            + self.table_bytes.load(Ordering::Relaxed)
            + self.other.load(Ordering::Relaxed);
        (limit > 0 && used > limit).then_some((used, limit))
    }

    /// Accounts a table grown (or dropped) from `before` slots of capacity
    /// to `after`.
    pub(super) fn table_resized(&self, before: usize, after: usize) {
        self.table_bytes
            .fetch_add(table_bytes(after), Ordering::Relaxed);
        self.table_bytes
            .fetch_sub(table_bytes(before), Ordering::Relaxed);
    }

    /// Accounts an entry of `len` bytes stored.
    pub(super) fn added(&self, len: usize) {
        self.bytes.fetch_add(entry_bytes(len), Ordering::Relaxed);
    }

    /// Accounts an entry of `len` bytes removed.
    pub(super) fn removed(&self, len: usize) {
        self.bytes.fetch_sub(entry_bytes(len), Ordering::Relaxed);
    }

    /// Accounts an entry replaced: `old` bytes by `new`.
    pub(super) fn resized(&self, old: usize, new: usize) {
        self.added(new);
        self.removed(old);
    }

    pub(super) fn read(&self, partition: PartitionId) -> RwLockReadGuard<'_, Partition> {
        // Nothing panics while holding a partition lock; were it poisoned,
        // the partition would still be whole (every change is one table
        // operation and its digest update).
        self.partitions[partition.0 as usize]
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn read_key<R>(
        &self,
        key: &[u8],
        hash: u64,
        now_ms: impl FnOnce() -> u64,
        f: impl FnOnce(SessionRef<'_>) -> R,
    ) -> Option<R> {
        let partition = self.read(partition_of(hash, self.partition_count));
        let slot = find(&partition.table, hash, key)?;
        let packed = Packed::parse(slot);
        let visible = packed.is_visible(now_ms);
        if visible {
            self.access.used(slot, hash);
        }
        visible.then(|| f(SessionRef { packed }))
    }

    /// Calls `f` with what is stored under `key`, tombstones included.
    pub(super) fn stored<R>(&self, key: &[u8], f: impl FnOnce(Packed<'_>) -> R) -> Option<R> {
        let hash = key_hash(key);
        let partition = self.read(partition_of(hash, self.partition_count));
        find(&partition.table, hash, key).map(|packed| f(Packed::parse(packed)))
    }

    pub(super) fn write(&self, partition: PartitionId) -> RwLockWriteGuard<'_, Partition> {
        self.partitions[partition.0 as usize]
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn record(&self, key: &[u8], kind: ChangeKind) {
        if self.watching.load(Ordering::Relaxed) {
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(KeyChange {
                    key: Bytes::copy_from_slice(key),
                    kind,
                });
        }
    }
}
