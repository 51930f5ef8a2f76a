//! Listing the keys of a partition, wherever it is stored: from this
//! node's store when it replicates the partition, otherwise from one of
//! its replicas (the first that answers within the request timeout, each
//! asked in turn). A Redis layer lists the whole keyspace this way, one
//! partition at a time (`SCAN`, `KEYS`, `DBSIZE`).

use super::*;

/// A listing waiting for a replica's answer.
#[derive(Debug)]
pub(crate) struct PendingList {
    pub(crate) call: CallId,
    pub(crate) partition: PartitionId,
    /// Replicas still to ask if this one does not answer.
    pub(crate) others: Vec<SocketAddr>,
}

impl Node {
    /// Lists the keys of `partition` that a reader sees at `now_ms`; its
    /// [`Outcome::Keys`] comes as an [`Effect::Done`] for `call`
    /// ([`Outcome::TooFewAnswers`] when no replica answers).
    pub fn partition_keys(&mut self, call: CallId, partition: PartitionId, now_ms: u64) {
        if !self.known(partition) {
            self.effects.push(Effect::Done {
                call,
                outcome: Outcome::Refused(format!("there is no partition {}", partition.0)),
            });
            return;
        }
        let replicas = Arc::clone(&self.replica_sets[partition.0 as usize]);
        if replicas.iter().any(|r| r.local) {
            let keys = self.store.reader().visible_keys(partition, now_ms);
            self.effects.push(Effect::Done {
                call,
                outcome: Outcome::Keys(keys),
            });
            return;
        }
        let others = replicas.iter().rev().filter_map(|r| r.addr).collect();
        self.ask_for_keys(PendingList {
            call,
            partition,
            others,
        });
    }

    /// Asks the next replica of a listing, or answers that none did.
    fn ask_for_keys(&mut self, mut pending: PendingList) {
        let Some(to) = pending.others.pop() else {
            self.effects.push(Effect::Done {
                call: pending.call,
                outcome: Outcome::TooFewAnswers {
                    answers: 0,
                    needed: 1,
                },
            });
            return;
        };
        let id = self.in_flight.next_id();
        self.effects.push(Effect::Send {
            to,
            message: Message::ListKeys {
                request: id,
                partition: pending.partition,
            },
        });
        self.in_flight.insert(id, Pending::List(pending));
        self.schedule(self.config.request_timeout_ms, Timer::Request(id));
    }

    /// A peer's listing request: the keys this node stores in the partition.
    pub(super) fn serve_list(
        &mut self,
        from: SocketAddr,
        request: u64,
        partition: PartitionId,
        now_ms: u64,
    ) {
        let keys = if self.known(partition) {
            self.store.reader().visible_keys(partition, now_ms)
        } else {
            Vec::new()
        };
        self.effects.push(Effect::Send {
            to: from,
            message: Message::Keys { request, keys },
        });
    }

    /// A replica's answer to a listing.
    pub(super) fn listed(&mut self, request: u64, keys: Vec<Bytes>) {
        if let Some(pending) = self.in_flight.take::<PendingList>(request) {
            self.effects.push(Effect::Done {
                call: pending.call,
                outcome: Outcome::Keys(keys),
            });
        }
    }

    /// A listing's replica did not answer in time: the next is asked.
    pub(super) fn list_expired(&mut self, pending: PendingList) {
        self.ask_for_keys(pending);
    }
}
