//! The read path: asking a key's replicas (fingerprints when this node
//! holds a copy, speculative retries), merging their answers, read repair.

use super::*;

impl Node {
    /// Coordinates a client read of `key`; its [`Outcome`] comes as an
    /// [`Effect::Done`] for `call`.
    pub fn read(&mut self, call: CallId, key: Bytes, level: Level, now_ms: u64) {
        self.start_read(call, key, level, None, now_ms);
    }

    /// Starts a read; `false` if it was refused at once (and answered so).
    pub(super) fn start_read(
        &mut self,
        call: CallId,
        key: Bytes,
        level: Level,
        then: Option<Level>,
        now_ms: u64,
    ) -> bool {
        let Some(replicas) = self.replicas_of(&key, call) else {
            return false;
        };
        let id = self.in_flight.next_id();
        let mut pending = PendingRead {
            call,
            key: key.clone(),
            needed: level.required(self.copies),
            waiting: all_of(&replicas),
            replicas: Arc::clone(&replicas),
            answers: Vec::with_capacity(replicas.len()),
            then,
            unasked: Vec::new(),
            local: None,
        };
        let mut remote: Vec<usize> = Vec::with_capacity(replicas.len());
        for (i, replica) in replicas.iter().enumerate() {
            if replica.local {
                pending.waiting &= !(1 << i);
                self.store.note_use(&key);
                let (session, fingerprint) = self.store.session_and_fingerprint(&key).unzip();
                pending.answers.push((i, session.clone()));
                pending.local = Some((session, fingerprint));
            } else {
                remote.push(i);
            }
        }
        // Ask only as many as the level still needs, starting at a replica
        // that changes from read to read so the load spreads; the rest
        // are asked if these are slow.
        let ask = pending.needed.saturating_sub(pending.answers.len());
        if self.config.speculative_read_ms > 0 && ask < remote.len() {
            let start = usize::try_from(id % remote.len() as u64).unwrap_or(0);
            remote.rotate_left(start);
            pending.unasked = remote.split_off(ask);
            if ask > 0 && !pending.unasked.is_empty() {
                self.schedule(self.config.speculative_read_ms, Timer::Speculate(id));
            }
        }
        let digest = pending.local.is_some();
        for &i in &remote {
            send_read(&mut self.effects, id, &replicas[i], &key, digest);
        }
        self.track_read(id, pending, now_ms);
        true
    }

    /// Asks a slow read's remaining replicas.
    pub(super) fn speculate(&mut self, request: u64) {
        let Some(pending) = self.in_flight.get_mut::<PendingRead>(request) else {
            return;
        };
        let digest = pending.local.is_some();
        for i in std::mem::take(&mut pending.unasked) {
            send_read(
                &mut self.effects,
                request,
                &pending.replicas[i],
                &pending.key,
                digest,
            );
        }
    }

    pub(super) fn track_read(&mut self, id: u64, pending: PendingRead, now_ms: u64) {
        debug_assert_eq!(
            pending.waiting & !all_of(&pending.replicas),
            0,
            "a read waits only on its replicas"
        );
        if pending.answers.len() >= pending.needed || pending.waiting == 0 {
            self.finish_read(pending, now_ms);
        } else {
            self.schedule_deadline(id);
            self.in_flight.insert(id, Pending::Read(pending));
        }
    }

    pub(super) fn answer(
        &mut self,
        request: u64,
        from: SocketAddr,
        session: Option<Session>,
        now_ms: u64,
    ) {
        if let Some(session) = &session
            && let Err(e) = self.hlc.observe(session.newest_stamp(), now_ms)
        {
            self.refuse_drift(from, &e);
            return;
        }
        let Some(pending) = self.in_flight.get_mut::<PendingRead>(request) else {
            return;
        };
        let Some(bit) = waiting_on(&pending.replicas, pending.waiting, from) else {
            return;
        };
        pending.waiting &= !bit;
        pending
            .answers
            .push((bit.trailing_zeros() as usize, session));
        if (pending.answers.len() >= pending.needed || pending.waiting == 0)
            && let Some(pending) = self.in_flight.take(request)
        {
            self.finish_read(pending, now_ms);
        }
    }

    /// A replica's fingerprint for a read: the same as this node's copy
    /// counts as an answer with that copy; a different one asks the replica
    /// for its state, which [`answer`](Self::answer) then takes.
    pub(super) fn answer_digest(
        &mut self,
        request: u64,
        from: SocketAddr,
        fingerprint: Option<u64>,
        now_ms: u64,
    ) {
        let Some(pending) = self.in_flight.get_mut::<PendingRead>(request) else {
            return;
        };
        let Some((local, local_fingerprint)) = &pending.local else {
            return;
        };
        let Some(bit) = waiting_on(&pending.replicas, pending.waiting, from) else {
            return;
        };
        if fingerprint != *local_fingerprint {
            self.stats.digest_mismatches += 1;
            self.effects.push(Effect::Send {
                to: from,
                message: Message::Read {
                    request,
                    key: pending.key.clone(),
                },
            });
            return;
        }
        let same = local.clone();
        pending.waiting &= !bit;
        pending.answers.push((bit.trailing_zeros() as usize, same));
        if (pending.answers.len() >= pending.needed || pending.waiting == 0)
            && let Some(pending) = self.in_flight.take(request)
        {
            self.finish_read(pending, now_ms);
        }
    }

    /// A read's deadline passed before enough replicas answered: the client
    /// hears how many did. A delete's read goes on to the delete, whose own
    /// level decides its outcome (the clock has seen what the answers carried).
    pub(super) fn read_expired(&mut self, mut pending: PendingRead, now_ms: u64) {
        if let Some(level) = pending.then.take() {
            let existed = merge_answers(&pending).is_some_and(|s| s.is_visible(now_ms));
            self.write_delete(pending.call, pending.key, level, existed, now_ms);
            return;
        }
        self.stats.read_timeouts += 1;
        let outcome = Outcome::TooFewAnswers {
            answers: pending.answers.len(),
            needed: pending.needed,
        };
        self.effects.push(Effect::Done {
            call: pending.call,
            outcome,
        });
    }

    /// Answers a read with the merge of its answers, and repairs the
    /// replicas that answered with less. A read that every replica up
    /// answered, but fewer than its level counts, is answered so (and a
    /// delete's read goes on to the delete).
    pub(super) fn finish_read(&mut self, pending: PendingRead, now_ms: u64) {
        debug_assert!(
            pending.answers.len() <= pending.replicas.len(),
            "more answers than replicas asked"
        );
        let merged = merge_answers(&pending);
        if let Some(newest) = &merged {
            for &(i, ref held) in &pending.answers {
                if held.as_ref() == Some(newest) {
                    continue;
                }
                let replica = &pending.replicas[i];
                let entries = vec![Entry {
                    key: pending.key.clone(),
                    session: newest.clone(),
                }];
                if replica.local {
                    // Our own copy is behind: repair it directly. The key was
                    // checked when the read began.
                    let _ = self
                        .store
                        .merge_remote(&pending.key, newest.clone(), now_ms);
                } else if let Some(to) = replica.addr {
                    self.effects.push(Effect::Send {
                        to,
                        message: Message::Merge { entries },
                    });
                }
            }
        }
        if let Some(level) = pending.then {
            let existed = merged.as_ref().is_some_and(|s| s.is_visible(now_ms));
            self.write_delete(pending.call, pending.key, level, existed, now_ms);
            return;
        }
        let outcome = if pending.answers.len() >= pending.needed {
            Outcome::Read(merged)
        } else {
            self.stats.reads_short_of_copies += 1;
            Outcome::TooFewAnswers {
                answers: pending.answers.len(),
                needed: pending.needed,
            }
        };
        self.effects.push(Effect::Done {
            call: pending.call,
            outcome,
        });
    }
}

/// Asks `replica` for its state of `key`, or only for its fingerprint.
pub(super) fn send_read(
    effects: &mut Vec<Effect>,
    request: u64,
    replica: &Replica,
    key: &Bytes,
    digest: bool,
) {
    if let Some(to) = replica.addr {
        let key = key.clone();
        let message = if digest {
            Message::ReadDigest { request, key }
        } else {
            Message::Read { request, key }
        };
        effects.push(Effect::Send { to, message });
    }
}

/// The merge of a read's answers (newest stamp per field), if any held the key.
pub(super) fn merge_answers(pending: &PendingRead) -> Option<Session> {
    let mut merged: Option<Session> = None;
    for (_, session) in &pending.answers {
        if let Some(session) = session {
            merged
                .get_or_insert_with(Session::default)
                .merge(session.clone());
        }
    }
    merged
}
