//! Writes on the caller's thread, and the one place that decides the order
//! of a peer's writes.
//!
//! A write goes one of two ways. Most go to the peer's task, which hands
//! them to the core node in the order they arrive; the core coordinates
//! each with the key's replicas, and a write of a key whose delete is still
//! reading waits behind that delete (`sessmesh_core::Node::write`). A
//! write of a key whose partition this peer alone replicates (every key of
//! a one-node cluster) may instead be stored by [`LocalWrites::try_write`]
//! on the caller's thread, stamped by the peer's own clock under the
//! partition's lock, without a hop to the task: any level is met once this
//! one copy has it.
//!
//! The rule that keeps the two ways in order: a write is stored here only
//! while no write handed to the task can still be overtaken. Each write
//! handed to the task holds a [`Queued`] ticket; the task drops it when it
//! takes the write (from then on the core orders it), except for a delete,
//! whose ticket it keeps until the delete is answered (a delete reads
//! before it is stamped, and a write stored here meanwhile would land
//! before it). While any ticket is held, every write goes to the task.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sessmesh_core::{Hlc, Outcome, StoreReader, Write};
use tokio::sync::Notify;

use crate::driver::now_ms;

/// The caller-thread path of one peer's writes; shared by its handles and
/// its task. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct LocalWrites {
    reader: StoreReader,
    /// The peer's clock, shared with its core node.
    clock: Arc<Hlc>,
    /// Tickets held: writes handed to the task that a write stored here
    /// could still overtake.
    queued: AtomicUsize,
    /// Wakes the task to report the changes stored here while someone
    /// watches them.
    changed: Notify,
}

/// A write handed to the peer's task, which a write on the caller's thread
/// must not overtake while this is held. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Queued(Arc<LocalWrites>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LocalWrites {
    pub(crate) fn new(reader: StoreReader, clock: Arc<Hlc>) -> Arc<Self> {
        Arc::new(LocalWrites {
            reader,
            clock,
            queued: AtomicUsize::new(0),
            changed: Notify::new(),
        })
    }

    /// The reader of the peer's store, for reads on the caller's thread.
    pub(crate) fn reader(&self) -> &StoreReader {
        &self.reader
    }

    /// A ticket for a write about to be handed to the task.
    pub(crate) fn queue(self: &Arc<Self>) -> Queued {
        self.queued.fetch_add(1, Ordering::AcqRel);
        Queued(Arc::clone(self))
    }

    /// Stores `write` on the caller's thread when this peer alone
    /// replicates the key's partition and no write handed to the task can
    /// still be overtaken; `None` otherwise: hand it to the task.
    pub(crate) fn try_write(&self, key: &[u8], write: &Write) -> Option<Outcome> {
        if self.queued.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = now_ms();
        if let Some(ahead_ms) = self.clock.ahead_of_peers_ms(now) {
            return Some(Outcome::ClockAhead {
                ahead_ms,
                max_drift_ms: self.clock.max_drift_ms(),
            });
        }
        // What a delete's read would have seen (only this copy exists).
        let existed =
            (*write == Write::Delete).then(|| self.reader.read(key, now, |_| ()).is_some());
        let (stamp, changed) = self.reader.write_local(key, write, &self.clock, now).ok()?;
        if changed && self.reader.watching() {
            self.changed.notify_one();
        }
        Some(Outcome::Written {
            acks: 1,
            stamp,
            existed,
        })
    }

    /// Waits until a write stored here changed what someone watches.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test panics to fail")]

    use bytes::Bytes;
    use sessmesh_core::{Config, NodeId, PartitionId, Store};

    use super::*;

    /// A store this node alone replicates, and the caller-thread path to it.
    fn alone() -> (Store, Arc<LocalWrites>) {
        let config = Config::default();
        let store = Store::new(&config);
        for p in 0..config.partition_count {
            store.set_replicated(PartitionId(p), 1);
        }
        let clock = Arc::new(Hlc::new(NodeId(1), config.max_clock_drift_ms));
        let local = LocalWrites::new(store.reader(), clock);
        (store, local)
    }

    fn put(value: &'static str) -> Write {
        Write::PutField {
            name: Bytes::from_static(b""),
            value: Bytes::from_static(value.as_bytes()),
        }
    }

    #[test]
    fn a_write_is_stored_here_only_while_no_ticket_is_held() {
        let (store, local) = alone();
        assert!(matches!(
            local.try_write(b"k", &put("a")),
            Some(Outcome::Written { acks: 1, .. })
        ));
        let first = local.queue();
        let second = local.queue();
        assert_eq!(local.try_write(b"k", &put("b")), None, "two tickets held");
        drop(first);
        assert_eq!(local.try_write(b"k", &put("b")), None, "one ticket held");
        drop(second);
        assert!(local.try_write(b"k", &put("c")).is_some());
        let held = store
            .session(b"k")
            .and_then(|s| s.registers().next().and_then(|(_, r)| r.val.clone()));
        assert_eq!(held, Some(Bytes::from_static(b"c")));
    }

    #[test]
    fn a_delete_here_says_whether_the_session_existed() {
        let (_store, local) = alone();
        let existed = |outcome: Option<Outcome>| match outcome {
            Some(Outcome::Written { existed, .. }) => existed,
            other => panic!("{other:?}"),
        };
        assert_eq!(existed(local.try_write(b"k", &Write::Delete)), Some(false));
        local.try_write(b"k", &put("a"));
        assert_eq!(existed(local.try_write(b"k", &Write::Delete)), Some(true));
        assert_eq!(existed(local.try_write(b"k", &put("b"))), None);
    }

    #[test]
    fn a_partition_with_other_replicas_goes_to_the_task() {
        let (store, local) = alone();
        let partition = store.partition_of(b"k");
        store.set_replicated(partition, 3);
        assert_eq!(local.try_write(b"k", &put("a")), None);
        store.set_replicated(partition, 0);
        assert_eq!(local.try_write(b"k", &put("a")), None);
    }
}
