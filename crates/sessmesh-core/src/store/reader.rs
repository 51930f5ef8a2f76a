//! Reading and writing a store from other threads than its owner's: what
//! the embedded peer's handles use for local reads and, where this node
//! alone holds a key, local writes.

use super::*;

/// Reads a [`Store`] from any thread while its owner changes it; cheap to
/// clone. Made by [`Store::reader`].
#[derive(Clone, Debug)]
pub struct StoreReader {
    pub(super) shared: Arc<Shared>,
}

impl StoreReader {
    /// Calls `f` with the session stored under `key` as a reader at `now_ms`
    /// sees it; `None` when absent, deleted or expired. The partition stays
    /// locked against changes while `f` runs, so copy out what you need.
    pub fn read<R>(
        &self,
        key: &[u8],
        now_ms: u64,
        f: impl FnOnce(SessionRef<'_>) -> R,
    ) -> Option<R> {
        self.shared.read_key(key, key_hash(key), || now_ms, f)
    }

    /// Like [`read`](Self::read), but only for keys of partitions the owning
    /// node replicates (see [`Store::set_replicated`]), and only when
    /// `enough(replica_count)` says this one copy answers the read. The time
    /// is asked for only when the session has a deadline.
    ///
    /// # Errors
    /// [`NotReplicated`] when the key's partition is not replicated here, or
    /// `enough` refused: the caller must ask the replicas.
    pub fn read_local<R>(
        &self,
        key: &[u8],
        enough: impl FnOnce(usize) -> bool,
        now_ms: impl FnOnce() -> u64,
        f: impl FnOnce(SessionRef<'_>) -> R,
    ) -> Result<Option<R>, NotReplicated> {
        let hash = key_hash(key);
        let partition = partition_of(hash, self.shared.partition_count);
        let replicas = self.shared.replicas[partition.0 as usize].load(Ordering::Acquire);
        if replicas == 0 || !enough(replicas as usize) {
            return Err(NotReplicated);
        }
        Ok(self.shared.read_key(key, hash, now_ms, f))
    }

    /// Applies `write` to `key` here, on the caller's thread, when the owning
    /// node is the only replica of the key's partition, so the write is
    /// complete at any level once stored. It is stamped by `clock` (the
    /// node's own) under the partition's lock, then merged as the owner
    /// merges. Returns the stamp and whether the stored state changed.
    ///
    /// # Errors
    /// [`NotReplicated`] when the partition has other replicas (or none
    /// here), or the key is longer than [`MAX_KEY_LEN`]: the owner must
    /// coordinate the write.
    pub fn write_local(
        &self,
        key: &[u8],
        write: &Write,
        clock: &Hlc,
        now_ms: u64,
    ) -> Result<(Stamp, bool), NotReplicated> {
        let hash = key_hash(key);
        let partition = partition_of(hash, self.shared.partition_count);
        let alone = || self.shared.replicas[partition.0 as usize].load(Ordering::Acquire) == 1;
        // Over the memory bound, a write that adds goes the coordinator's
        // way, which refuses it.
        let refused = write.adds() && self.shared.over_limit().is_some();
        if key.len() > MAX_KEY_LEN || !alone() || refused {
            return Err(NotReplicated);
        }
        let mut locked = self.shared.write(partition);
        // The replica set changes under this lock: look again.
        if !alone() {
            return Err(NotReplicated);
        }
        let stamp = clock.stamp(now_ms);
        let incoming = Session::from_write(write, stamp);
        let changed = self.shared.merge(&mut locked, key, hash, incoming, now_ms);
        Ok((stamp, changed))
    }

    /// Whether changes are being recorded for someone watching them.
    pub fn watching(&self) -> bool {
        self.shared.watching.load(Ordering::Relaxed)
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.shared.partition_count
    }

    /// The keys of the sessions in `partition` that a reader at `now_ms`
    /// sees, in no particular order.
    pub fn visible_keys(&self, partition: PartitionId, now_ms: u64) -> Vec<Bytes> {
        let mut keys = Vec::new();
        self.for_each_visible_key(partition, now_ms, |key| {
            keys.push(Bytes::copy_from_slice(key));
        });
        keys
    }

    /// Calls `f` with the key of each session in `partition` that a reader
    /// at `now_ms` sees, copying none (counting them costs no memory). The
    /// partition stays locked against writes while `f` runs.
    pub fn for_each_visible_key(
        &self,
        partition: PartitionId,
        now_ms: u64,
        mut f: impl FnMut(&[u8]),
    ) {
        let partition = self.shared.read(partition);
        for packed in &partition.table {
            let packed = Packed::parse(packed);
            if packed.is_visible(|| now_ms) {
                f(packed.key);
            }
        }
    }
}

/// The key's partition is not replicated by the node that owns the store
/// (for a local write: not by that node alone); its replicas must be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotReplicated;
