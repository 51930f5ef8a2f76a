//! The write path: coordinating a client's write, its delete-first read,
//! the acknowledgements, and what a write short of copies leaves behind.

use super::*;

impl Node {
    /// Coordinates a client write of `key`; its [`Outcome`] comes as an
    /// [`Effect::Done`] for `call`.
    ///
    /// A [`Write::Delete`] first reads `key` at the same level, so that its
    /// stamp is newer than every stamp that read saw: a logout supersedes
    /// every write acknowledged at that level before it began, whatever the
    /// coordinators' clocks (within the drift bound) say. Writes of the same
    /// key handed to this node while that read runs wait for it and are
    /// stamped after the delete: writes are applied in the order they came.
    pub fn write(&mut self, call: CallId, key: Bytes, write: Write, level: Level, now_ms: u64) {
        self.eviction_clock(Some(now_ms));
        if let Some(ahead_ms) = self.hlc.ahead_of_peers_ms(now_ms) {
            self.refuse_ahead(call, ahead_ms);
        } else if write.adds() && self.refuse_over_memory(call, now_ms) {
        } else if let Some(waiting) = self.deleting.get_mut(&key) {
            waiting.push((call, write, level));
        } else if write == Write::Delete {
            self.deleting.insert(key.clone(), Vec::new());
            if !self.start_read(call, key.clone(), level, Some(level), now_ms) {
                self.deleting.remove(&key);
            }
        } else {
            self.write_now(call, key, write, level, None, now_ms);
            // Its own copy may have taken it over the bound.
            self.evict_if_over(now_ms);
        }
    }

    /// Coordinates a delete whose read is done (or timed out, or answered
    /// by every replica up), then the writes of its key that waited for
    /// it, in order. `existed` is whether the read saw a live session.
    pub(super) fn write_delete(
        &mut self,
        call: CallId,
        key: Bytes,
        level: Level,
        existed: bool,
        now_ms: u64,
    ) {
        self.write_now(
            call,
            key.clone(),
            Write::Delete,
            level,
            Some(existed),
            now_ms,
        );
        for (call, write, level) in self.deleting.remove(&key).unwrap_or_default() {
            // A later delete among them starts its own read, and the rest
            // wait for that one.
            self.write(call, key.clone(), write, level, now_ms);
        }
    }

    /// Stamps and sends a write to its replicas; the stamp, unless it was
    /// refused (and answered so).
    pub(super) fn write_now(
        &mut self,
        call: CallId,
        key: Bytes,
        write: Write,
        level: Level,
        existed: Option<bool>,
        now_ms: u64,
    ) -> Option<Stamp> {
        let replicas = self.replicas_of(&key, call)?;
        let stamp = self.stamp_or_refuse(call, now_ms)?;
        // Until this node's clock is measured, its own copy waits for
        // another replica to accept the stamp.
        let defer = !self.clocks.measured() && replicas.iter().any(|r| r.addr.is_some());
        let id = self.in_flight.next_id();
        let mut pending = PendingWrite {
            call,
            key: key.clone(),
            write: write.clone(),
            stamp,
            needed: level.required(self.copies),
            waiting: all_of(&replicas),
            replicas: Arc::clone(&replicas),
            acks: 0,
            answered: false,
            existed,
            deferred: None,
            refused_ahead_ms: 0,
        };
        for (i, replica) in replicas.iter().enumerate() {
            if replica.local {
                if defer {
                    pending.deferred = Some(i);
                } else if self.store.apply(&key, &write, stamp, now_ms).is_ok() {
                    pending.waiting &= !(1 << i);
                    pending.acks += 1;
                }
            } else if let Some(to) = replica.addr {
                let message = Message::Write {
                    request: id,
                    key: key.clone(),
                    write: write.clone(),
                    stamp,
                };
                self.effects.push(Effect::Send { to, message });
            }
        }
        self.track_write(id, pending);
        Some(stamp)
    }

    pub(super) fn track_write(&mut self, id: u64, mut pending: PendingWrite) {
        debug_assert_eq!(
            pending.waiting & !all_of(&pending.replicas),
            0,
            "a write waits only on its replicas"
        );
        answer_when_written(&mut self.effects, &mut pending);
        if pending.waiting == 0 {
            self.write_settled(pending);
        } else {
            self.schedule_deadline(id);
            self.in_flight.insert(id, Pending::Write(pending));
        }
    }

    /// Every replica up has acknowledged a write. If that was too few for
    /// its level (fewer replicas are up than it counts), the client hears
    /// so now rather than at the deadline, and the members that are down
    /// but would hold a copy get hints.
    pub(super) fn write_settled(&mut self, mut pending: PendingWrite) {
        debug_assert_eq!(pending.waiting, 0);
        if pending.answered {
            return;
        }
        debug_assert!(pending.acks < pending.needed);
        pending.answered = true;
        self.stats.writes_short_of_copies += 1;
        self.effects.push(Effect::Done {
            call: pending.call,
            outcome: Outcome::TooFewAcks {
                acks: pending.acks,
                needed: pending.needed,
            },
        });
        self.hint_copies_down(&pending);
    }

    /// Hints for the members that are down (or not known to be up) but
    /// would replicate `pending`'s key if they were up: what placement over
    /// every counted member gives, less the replicas it has now.
    pub(super) fn hint_copies_down(&mut self, pending: &PendingWrite) {
        if pending.replicas.len() >= self.copies {
            return;
        }
        let partition = self.store.partition_of(&pending.key);
        let mut ranked: Vec<(u64, &String)> = self
            .counted
            .iter()
            .map(|name| (rendezvous_score(partition, name.as_bytes()), name))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        for (_, name) in ranked.into_iter().take(self.config.replication_factor) {
            if pending.replicas.iter().any(|r| r.name == *name) {
                continue;
            }
            self.stats.hints_queued += 1;
            self.hints.push(Hint {
                replica: name.clone(),
                key: pending.key.clone(),
                write: pending.write.clone(),
                stamp: pending.stamp,
            });
        }
    }

    /// A replica applied the write `request`.
    pub(super) fn acknowledge(&mut self, request: u64, from: SocketAddr, now_ms: u64) {
        let Some(pending) = self.in_flight.get_mut::<PendingWrite>(request) else {
            return;
        };
        let Some(bit) = waiting_on(&pending.replicas, pending.waiting, from) else {
            return;
        };
        pending.waiting &= !bit;
        pending.acks += 1;
        self.stats.replica_acks += 1;
        // A replica accepted the stamp: this node's copy takes it too.
        apply_deferred(&mut self.store, pending, now_ms);
        debug_assert!(
            pending.acks <= pending.replicas.len(),
            "more acknowledgements than replicas asked"
        );
        answer_when_written(&mut self.effects, pending);
        if pending.waiting == 0
            && let Some(pending) = self.in_flight.take(request)
        {
            self.write_settled(pending);
        }
    }

    /// A write's deadline passed before every replica acknowledged it: the
    /// client hears how many did, if it has not heard yet, and the replicas
    /// that did not get hints.
    pub(super) fn write_expired(&mut self, mut pending: PendingWrite, now_ms: u64) {
        if pending.deferred.is_some() {
            if pending.refused_ahead_ms > 0 {
                // Refused, and accepted nowhere: it is stored nowhere.
                self.refuse_ahead(pending.call, pending.refused_ahead_ms);
                return;
            }
            // Nobody answered: nothing says the stamp is bad. Its own
            // copy may be all the level needs.
            apply_deferred(&mut self.store, &mut pending, now_ms);
            answer_when_written(&mut self.effects, &mut pending);
        }
        self.stats.hints_queued += u64::from(pending.waiting.count_ones());
        if !pending.answered {
            self.stats.write_timeouts += 1;
            let outcome = Outcome::TooFewAcks {
                acks: pending.acks,
                needed: pending.needed,
            };
            self.effects.push(Effect::Done {
                call: pending.call,
                outcome,
            });
            self.hint_copies_down(&pending);
        }
        for i in replicas_in(pending.waiting) {
            self.hints.push(Hint {
                replica: pending.replicas[i].name.clone(),
                key: pending.key.clone(),
                write: pending.write.clone(),
                stamp: pending.stamp,
            });
        }
    }
}

/// Answers a write's client, once, when enough replicas have acknowledged it.
pub(super) fn answer_when_written(effects: &mut Vec<Effect>, pending: &mut PendingWrite) {
    if !pending.answered && pending.acks >= pending.needed {
        pending.answered = true;
        let outcome = Outcome::Written {
            acks: pending.acks,
            stamp: pending.stamp,
            existed: pending.existed,
        };
        effects.push(Effect::Done {
            call: pending.call,
            outcome,
        });
    }
}

/// Applies a write to this node's own copy if it waited for a stamp check
/// (see [`PendingWrite::deferred`]), and counts it.
pub(super) fn apply_deferred(store: &mut Store, pending: &mut PendingWrite, now_ms: u64) {
    if let Some(i) = pending.deferred.take()
        && store
            .apply(&pending.key, &pending.write, pending.stamp, now_ms)
            .is_ok()
    {
        pending.waiting &= !(1 << i);
        pending.acks += 1;
    }
}
