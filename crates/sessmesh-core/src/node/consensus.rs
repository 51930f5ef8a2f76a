//! The coordinator of consensus: one linearizable operation on one key, as
//! rounds of Paxos among the key's replicas (see [`crate::consensus`]).
//!
//! An attempt prepares a fresh ballot; a replica that promised a newer one
//! rejects it, and the attempt starts again after a short pause, until the
//! request timeout. An operation whose own proposal was pre-empted is not
//! decided again: its next attempt finds out what became of the proposal.
//! If a majority still holds it accepted, or its write is the newest
//! commit, it was chosen; if nothing was committed since it was decided,
//! the same proposal (same write, same stamp) is made again. Otherwise, or
//! when time is up, the answer is [`Outcome::Undecided`] with
//! `maybe_applied`: the write may still be chosen by a later round, so
//! deciding the operation again could apply it twice.

use super::in_flight::Mine;
use super::*;
use crate::consensus;
use crate::replication::Decision;

/// The longest pause before an attempt pre-empted by another
/// coordinator's ballot starts again, ms.
const MAX_BACKOFF_MS: u64 = 50;

/// Why an operation was not decided while views of the key's replicas
/// differed.
const MOVING: &str = "the key's replicas are moving (nodes see different replica sets \
     while a membership change spreads); retry when it settles";

impl Node {
    /// Decides `op` on `key` by consensus among the key's replicas; its
    /// [`Outcome`] (`Decided`, `Undecided`, `Refused` or `ClockAhead`)
    /// comes as an [`Effect::Done`] for `call`.
    pub fn consensus(&mut self, call: CallId, key: Bytes, op: Cas, now_ms: u64) {
        if let Some(ahead_ms) = self.hlc.ahead_of_peers_ms(now_ms) {
            self.refuse_ahead(call, ahead_ms);
            return;
        }
        let Some(replicas) = self.replicas_of(&key, call) else {
            return;
        };
        let needed = Level::Quorum.required(self.copies);
        if replicas.len() < needed {
            self.effects.push(Effect::Done {
                call,
                outcome: Outcome::Undecided {
                    reason: format!(
                        "{} of the key's {} copies are up; consensus needs {needed}",
                        replicas.len(),
                        self.copies
                    ),
                    maybe_applied: false,
                },
            });
            return;
        }
        let round = PendingRound {
            call,
            key,
            op,
            replicas,
            needed,
            view: 0,
            moving: 0,
            ballot: Stamp::default(),
            phase: Phase::Backoff,
            waiting: 0,
            promises: Vec::new(),
            accepts: 0,
            started_ms: now_ms,
            attempts: 0,
            mine: None,
            finished: Vec::new(),
        };
        self.prepare(round, now_ms);
    }

    /// Starts an attempt: a fresh ballot under this node's present view of
    /// the key's replicas, promised here if this node is one, and asked of
    /// the others.
    fn prepare(&mut self, mut round: PendingRound, now_ms: u64) {
        let partition = self.store.partition_of(&round.key);
        round.replicas = Arc::clone(&self.replica_sets[partition.0 as usize]);
        round.needed = Level::Quorum.required(self.copies);
        round.view = self.view_for(partition);
        if round.replicas.len() < round.needed {
            // The membership changed since the operation began.
            round.moving += 1;
            self.retry_later(round, now_ms);
            return;
        }
        let Some(ballot) = self.stamp_or_refuse(round.call, now_ms) else {
            return;
        };
        round.attempts += 1;
        round.ballot = ballot;
        round.phase = Phase::Prepare;
        round.waiting = all_of(&round.replicas);
        round.promises.clear();
        round.accepts = 0;
        let id = self.in_flight.next_id();
        let replicas = Arc::clone(&round.replicas);
        let ready = self.acceptor_ready(&round.key);
        for (i, replica) in replicas.iter().enumerate() {
            if replica.local && !ready {
                // Still learning (learning.rs): the others must make the majority.
                round.waiting &= !(1 << i);
            } else if replica.local {
                round.waiting &= !(1 << i);
                match self.acceptors.prepare(&round.key, ballot) {
                    Ok(promise) => {
                        round
                            .promises
                            .push((i, promise, self.store.session(&round.key)));
                    }
                    Err(promised) => {
                        let _ = self.hlc.observe(promised, now_ms);
                        self.retry_later(round, now_ms);
                        return;
                    }
                }
            } else if let Some(to) = replica.addr {
                let message = Message::Prepare {
                    request: id,
                    key: round.key.clone(),
                    ballot,
                    view: round.view,
                };
                self.effects.push(Effect::Send { to, message });
            }
        }
        self.schedule_deadline(id);
        self.in_flight.insert(id, Pending::Round(Box::new(round)));
        self.advance(id, now_ms);
    }

    /// A replica's promise.
    pub(super) fn promised(
        &mut self,
        request: u64,
        from: SocketAddr,
        promise: Promise,
        session: Option<Session>,
        now_ms: u64,
    ) {
        // The clock observes every stamp the answer carries, so a proposal
        // decided on it is stamped after them.
        let stamps = [
            promise.accepted.as_ref().map(|p| p.ballot.max(p.stamp)),
            session.as_ref().map(Session::newest_stamp),
            Some(promise.committed.max(promise.committed_stamp)),
        ];
        if !self.observe_newest(from, stamps, now_ms) {
            return;
        }
        let Some(round) = self.in_flight.get_mut::<PendingRound>(request) else {
            return;
        };
        if !matches!(round.phase, Phase::Prepare) {
            return;
        }
        let Some(bit) = waiting_on(&round.replicas, round.waiting, from) else {
            return;
        };
        round.waiting &= !bit;
        let i = bit.trailing_zeros() as usize;
        round.promises.push((i, promise, session));
        self.advance(request, now_ms);
    }

    /// A replica accepted this attempt's proposal.
    pub(super) fn accepted(&mut self, request: u64, from: SocketAddr, now_ms: u64) {
        let Some(round) = self.in_flight.get_mut::<PendingRound>(request) else {
            return;
        };
        if !matches!(round.phase, Phase::Propose { .. }) {
            return;
        }
        let Some(bit) = waiting_on(&round.replicas, round.waiting, from) else {
            return;
        };
        round.waiting &= !bit;
        round.accepts += 1;
        debug_assert!(round.accepts <= round.replicas.len());
        self.advance(request, now_ms);
    }

    /// A replica promised a newer ballot than this attempt's.
    pub(super) fn round_rejected(
        &mut self,
        request: u64,
        from: SocketAddr,
        promised: Ballot,
        now_ms: u64,
    ) {
        if waiting_on_round(&mut self.in_flight, request, from).is_none() {
            return;
        }
        let Some(round) = self.in_flight.take::<PendingRound>(request) else {
            return;
        };
        // The next ballot is newer than the one that pre-empted this.
        if let Err(e) = self.hlc.observe(promised, now_ms) {
            self.refuse_drift(from, &e);
        }
        self.retry_later(round, now_ms);
    }

    /// A replica sees another replica set for the key: it takes no part in
    /// this attempt. The attempt goes on with the others while a majority
    /// may still answer, and starts again after a pause otherwise.
    pub(super) fn round_moving(&mut self, request: u64, from: SocketAddr, now_ms: u64) {
        let Some(bit) = waiting_on_round(&mut self.in_flight, request, from) else {
            return;
        };
        let Some(round) = self.in_flight.get_mut::<PendingRound>(request) else {
            return;
        };
        round.waiting &= !bit;
        round.moving += 1;
        let answered = match round.phase {
            Phase::Prepare => round.promises.len(),
            Phase::Propose { .. } => round.accepts,
            Phase::Backoff | Phase::Commit { .. } => return,
        };
        let may_answer = round.waiting.count_ones() as usize;
        if answered + may_answer >= round.needed {
            return;
        }
        if let Some(round) = self.in_flight.take::<PendingRound>(request) {
            self.retry_later(round, now_ms);
        }
    }

    /// Moves an attempt on once enough replicas answered its phase.
    fn advance(&mut self, id: u64, now_ms: u64) {
        let Some(round) = self.in_flight.get_mut::<PendingRound>(id) else {
            return;
        };
        let ready = match round.phase {
            Phase::Prepare => round.promises.len() >= round.needed,
            Phase::Propose { .. } | Phase::Commit { .. } => round.accepts >= round.needed,
            Phase::Backoff => false,
        };
        if !ready {
            return;
        }
        let Some(round) = self.in_flight.take::<PendingRound>(id) else {
            return;
        };
        match round.phase {
            Phase::Prepare => self.promised_by_majority(id, round, now_ms),
            Phase::Propose { .. } => self.chosen(id, round, now_ms),
            Phase::Commit { .. } => self.answer_chosen(round),
            Phase::Backoff => {}
        }
    }

    /// A majority promised: finish what one of them accepted and may not
    /// have been committed, or decide the operation and propose its write.
    fn promised_by_majority(&mut self, id: u64, mut round: PendingRound, now_ms: u64) {
        let (newest_commit, newest_commit_stamp) = round
            .promises
            .iter()
            .map(|(_, p, _)| (p.committed, p.committed_stamp))
            .max()
            .unwrap_or_default();
        let in_progress = round
            .promises
            .iter()
            .filter_map(|(_, p, _)| p.accepted.as_ref())
            .filter(|p| p.ballot > newest_commit)
            .max_by_key(|p| p.ballot)
            .cloned();
        if let Some(mine) = round.mine.take() {
            let stamp = mine.proposal.stamp;
            if newest_commit_stamp == stamp
                || round
                    .promises
                    .iter()
                    .any(|(_, p, _)| p.recent.contains(&stamp))
            {
                // Another round finished it (and may have committed
                // others since).
                self.applied(round.call, mine);
                return;
            }
            match &in_progress {
                // Still in progress: carry it on under this ballot.
                Some(p) if p.stamp == mine.proposal.stamp => {}
                // Another is in progress: finish that first, then look again.
                Some(_) => {
                    round.mine = Some(mine);
                    self.finish(id, round, in_progress, now_ms);
                    return;
                }
                // Nothing committed since it was decided, and a majority
                // does not hold it: proposing it again is all that is left.
                None if newest_commit == mine.seen_commit => {}
                // Others were committed since. Its write still in the
                // state the majority holds says it was chosen; otherwise
                // it may have been chosen and overwritten, or not.
                None => {
                    let held = round
                        .promises
                        .iter()
                        .filter_map(|(_, _, s)| s.as_ref())
                        .any(|s| s.holds_stamp(mine.proposal.stamp));
                    if held {
                        self.applied(round.call, mine);
                        return;
                    }
                    // Had it been chosen, its commit would come before
                    // the newest one, whose proposal carried its stamp to
                    // the majority that accepted it, one of which is in
                    // this majority. A commit newer than its ballot means
                    // it can no longer be chosen either. So when every
                    // answer would still hold its stamp, it was never
                    // chosen: decide the operation afresh.
                    let never = newest_commit > mine.proposal.ballot
                        && round
                            .promises
                            .iter()
                            .all(|(_, p, _)| consensus::would_hold(&p.recent, stamp));
                    if never {
                        self.decide(id, round, newest_commit, now_ms);
                    } else {
                        self.undecided(
                            round.call,
                            "pre-empted after proposing, and other writes were committed since"
                                .into(),
                            true,
                        );
                    }
                    return;
                }
            }
            let proposal = Proposal {
                ballot: round.ballot,
                ..mine.proposal.clone()
            };
            round.mine = Some(Mine {
                proposal: proposal.clone(),
                ..mine
            });
            self.propose(id, round, proposal, false, None, now_ms);
            return;
        }
        if in_progress.is_some() {
            self.finish(id, round, in_progress, now_ms);
            return;
        }
        self.decide(id, round, newest_commit, now_ms);
    }

    /// Answers an operation whose own proposal was chosen.
    fn applied(&mut self, call: CallId, mine: Mine) {
        self.effects.push(Effect::Done {
            call,
            outcome: Outcome::Decided(Box::new(Decision {
                applied: true,
                before: mine.before,
                written: Some((mine.proposal.write, mine.proposal.stamp)),
            })),
        });
    }

    /// Proposes another round's proposal that may have been chosen, under
    /// this attempt's ballot.
    fn finish(&mut self, id: u64, round: PendingRound, in_progress: Option<Proposal>, now_ms: u64) {
        let Some(unfinished) = in_progress else {
            return;
        };
        let proposal = Proposal {
            ballot: round.ballot,
            write: unfinished.write,
            stamp: unfinished.stamp,
            recent: unfinished.recent,
        };
        self.propose(id, round, proposal, true, None, now_ms);
    }

    /// Decides the operation on the state the majority reported, and
    /// proposes its write if it has one.
    fn decide(&mut self, id: u64, mut round: PendingRound, newest_commit: Ballot, now_ms: u64) {
        let mut current: Option<Session> = None;
        for (_, _, session) in &round.promises {
            if let Some(session) = session {
                match &mut current {
                    Some(merged) => merged.merge(session.clone()),
                    None => current = Some(session.clone()),
                }
            }
        }
        let decided = match round.op.decide(current.as_ref(), now_ms) {
            Ok(decided) => decided,
            Err(e) => {
                self.effects.push(Effect::Done {
                    call: round.call,
                    outcome: Outcome::Refused(e.to_string()),
                });
                return;
            }
        };
        let Some(write) = decided.write else {
            self.effects.push(Effect::Done {
                call: round.call,
                outcome: Outcome::Decided(Box::new(Decision {
                    applied: false,
                    before: current,
                    written: None,
                })),
            });
            return;
        };
        // Newer than every value the majority reported: the clock observed them.
        let Some(stamp) = self.stamp_or_refuse(round.call, now_ms) else {
            return;
        };
        let proposal = Proposal {
            ballot: round.ballot,
            write,
            stamp,
            recent: Vec::new(),
        };
        round.mine = Some(Mine {
            proposal: proposal.clone(),
            before: current.clone(),
            seen_commit: newest_commit,
        });
        self.propose(id, round, proposal, false, current, now_ms);
    }

    /// Asks every replica to accept `proposal` under the attempt's ballot.
    fn propose(
        &mut self,
        id: u64,
        mut round: PendingRound,
        mut proposal: Proposal,
        finishing: bool,
        before: Option<Session>,
        now_ms: u64,
    ) {
        // It carries every commit its majority knows of, and those this
        // operation finished.
        let known = round.promises.iter().flat_map(|(_, p, _)| &p.recent);
        for stamp in known.chain(&round.finished).copied().collect::<Vec<_>>() {
            consensus::remember(&mut proposal.recent, stamp);
        }
        round.waiting = all_of(&round.replicas);
        round.accepts = 0;
        let replicas = Arc::clone(&round.replicas);
        let ready = self.acceptor_ready(&round.key);
        for (i, replica) in replicas.iter().enumerate() {
            if replica.local && !ready {
                round.waiting &= !(1 << i);
            } else if replica.local {
                round.waiting &= !(1 << i);
                if let Err(promised) = self.acceptors.accept(&round.key, proposal.clone()) {
                    let _ = self.hlc.observe(promised, now_ms);
                    round.phase = Phase::Propose {
                        proposal,
                        finishing,
                        before,
                    };
                    self.retry_later(round, now_ms);
                    return;
                }
                round.accepts += 1;
            } else if let Some(to) = replica.addr {
                let message = Message::Propose {
                    request: id,
                    key: round.key.clone(),
                    proposal: proposal.clone(),
                    view: round.view,
                };
                self.effects.push(Effect::Send { to, message });
            }
        }
        round.phase = Phase::Propose {
            proposal,
            finishing,
            before,
        };
        self.in_flight.insert(id, Pending::Round(Box::new(round)));
        self.advance(id, now_ms);
    }

    /// A majority accepted: the proposal is chosen. Every replica hears so;
    /// the operation is answered once a majority applied it, or, if the
    /// proposal was another round's, starts again.
    fn chosen(&mut self, id: u64, mut round: PendingRound, now_ms: u64) {
        let Phase::Propose {
            proposal,
            finishing,
            before,
        } = round.phase
        else {
            return;
        };
        round.waiting = all_of(&round.replicas);
        round.accepts = 0;
        for (i, replica) in round.replicas.iter().enumerate() {
            if replica.local {
                self.commit_here(&round.key, &proposal, now_ms);
                round.waiting &= !(1 << i);
                round.accepts += 1;
            } else if let Some(to) = replica.addr {
                let message = Message::Commit {
                    request: (!finishing).then_some(id),
                    key: round.key.clone(),
                    proposal: proposal.clone(),
                };
                self.effects.push(Effect::Send { to, message });
            }
        }
        if finishing {
            let mut round = PendingRound {
                phase: Phase::Backoff,
                ..round
            };
            consensus::remember(&mut round.finished, proposal.stamp);
            self.prepare(round, now_ms);
            return;
        }
        let before = before.or_else(|| round.mine.take().and_then(|m| m.before));
        round.phase = Phase::Commit { proposal, before };
        self.in_flight.insert(id, Pending::Round(Box::new(round)));
        self.advance(id, now_ms);
    }

    /// A replica applied the operation's chosen proposal.
    pub(super) fn committed(&mut self, request: u64, from: SocketAddr) {
        let Some(round) = self.in_flight.get_mut::<PendingRound>(request) else {
            return;
        };
        if !matches!(round.phase, Phase::Commit { .. }) {
            return;
        }
        let Some(bit) = waiting_on(&round.replicas, round.waiting, from) else {
            return;
        };
        round.waiting &= !bit;
        round.accepts += 1;
        if round.accepts >= round.needed
            && let Some(round) = self.in_flight.take::<PendingRound>(request)
        {
            self.answer_chosen(round);
        }
    }

    /// Answers an operation whose own proposal is chosen and applied by a
    /// majority (or whose time for that ran out: it is chosen all the same).
    fn answer_chosen(&mut self, round: PendingRound) {
        let Phase::Commit { proposal, before } = round.phase else {
            return;
        };
        self.effects.push(Effect::Done {
            call: round.call,
            outcome: Outcome::Decided(Box::new(Decision {
                applied: true,
                before,
                written: Some((proposal.write, proposal.stamp)),
            })),
        });
    }

    /// Starts the operation again after a pause, unless its write was
    /// proposed (then it may be chosen yet: answered undecided) or its time
    /// is up.
    fn retry_later(&mut self, mut round: PendingRound, now_ms: u64) {
        if now_ms >= round.started_ms + self.config.request_timeout_ms {
            let reason = if round.moving > 0 {
                MOVING.to_owned()
            } else {
                format!(
                    "contended: pre-empted by other coordinators' rounds {} times",
                    round.attempts
                )
            };
            self.undecided(round.call, reason, round.mine.is_some());
            return;
        }
        // A pause that grows with the attempts and differs between nodes,
        // so that two coordinators pre-empting each other fall apart.
        let spread = self.hlc.node().0 % MAX_BACKOFF_MS;
        let pause = if round.mine.is_some() {
            // Its own proposal is out: look again soon, while the commits
            // that may have finished it are still among the recent ones
            // the replicas keep.
            spread % 3 + 1
        } else {
            (u64::from(round.attempts) * 7 + spread) % MAX_BACKOFF_MS + 1
        };
        round.phase = Phase::Backoff;
        let id = self.in_flight.next_id();
        self.in_flight.insert(id, Pending::Round(Box::new(round)));
        self.schedule(pause, Timer::RetryRound(id));
    }

    /// A pre-empted operation's pause is over.
    pub(super) fn retry_round(&mut self, id: u64, now_ms: u64) {
        if let Some(round) = self.in_flight.take::<PendingRound>(id) {
            self.prepare(round, now_ms);
        }
    }

    /// An attempt's deadline passed before a majority answered.
    pub(super) fn round_expired(&mut self, round: PendingRound) {
        let maybe_applied = round.mine.is_some();
        let (answers, maybe_applied) = match &round.phase {
            Phase::Prepare => (round.promises.len(), maybe_applied),
            Phase::Propose { .. } => (round.accepts, maybe_applied),
            // A pausing round has no deadline of its own.
            Phase::Backoff => return,
            // Chosen: the replicas that did not apply it yet will.
            Phase::Commit { .. } => {
                self.answer_chosen(round);
                return;
            }
        };
        let mut reason = format!(
            "timed out: {answers} of the {} replicas a majority needs answered",
            round.needed
        );
        if round.moving > 0 {
            reason = format!("{reason}; {MOVING}");
        }
        let here_too = round.replicas.iter().any(|r| r.local);
        if here_too && !self.acceptor_ready(&round.key) {
            reason = format!(
                "{reason}; this replica is still learning the key's consensus state \
                 from the others (after a start or a membership change)"
            );
        }
        self.undecided(round.call, reason, maybe_applied);
    }

    fn undecided(&mut self, call: CallId, reason: String, maybe_applied: bool) {
        self.effects.push(Effect::Done {
            call,
            outcome: Outcome::Undecided {
                reason,
                maybe_applied,
            },
        });
    }
}

/// The bit of the replica at `from`, if the round `request` still waits
/// for its answer to the current phase.
fn waiting_on_round(in_flight: &mut InFlight, request: u64, from: SocketAddr) -> Option<u64> {
    let round = in_flight.get_mut::<PendingRound>(request)?;
    // A refusal that comes once the proposal is chosen changes nothing.
    if matches!(round.phase, Phase::Backoff | Phase::Commit { .. }) {
        return None;
    }
    waiting_on(&round.replicas, round.waiting, from)
}
