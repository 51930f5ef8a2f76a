//! The coordinator of consensus: one linearizable operation on one key, or
//! on several keys of one hash tag, as rounds of Paxos among the keys'
//! replicas in their instance (see [`crate::consensus`]). What it does
//! with a majority's promises is in `deciding.rs`.
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

use super::*;
use crate::consensus;
use crate::consensus::MAX_GROUP_KEYS;

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
        let instance = consensus::instance_of(&key);
        self.start_round(call, instance, vec![key], RoundOp::One(op), now_ms);
    }

    /// Decides `op` on `keys`, keys of one hash tag (or one key), by
    /// consensus among their replicas, all at once: linearizable with every
    /// consensus operation on any of them. Its [`Outcome`]
    /// (`DecidedGroup`, `Undecided`, `Refused` or `ClockAhead`) comes as an
    /// [`Effect::Done`] for `call`; `Refused` at once when the keys are
    /// none, more than [`MAX_GROUP_KEYS`], repeated, or of several hash
    /// tags.
    pub fn consensus_group(&mut self, call: CallId, keys: Vec<Bytes>, op: GroupCas, now_ms: u64) {
        let refusal = match keys.first() {
            None => Some("no keys".to_owned()),
            Some(_) if keys.len() > MAX_GROUP_KEYS => Some(format!(
                "{} keys; one operation takes at most {MAX_GROUP_KEYS}",
                keys.len()
            )),
            Some(first) => {
                let instance = consensus::instance_of(first);
                let mut seen = HashSet::new();
                keys.iter().find_map(|key| {
                    if consensus::instance_of(key) != instance {
                        Some(format!(
                            "keys {} and {} are of different hash tags: one operation \
                             takes keys of one hash tag only",
                            String::from_utf8_lossy(first),
                            String::from_utf8_lossy(key)
                        ))
                    } else if !seen.insert(key) {
                        Some(format!(
                            "key {} is named twice",
                            String::from_utf8_lossy(key)
                        ))
                    } else {
                        None
                    }
                })
            }
        };
        if let Some(reason) = refusal {
            self.effects.push(Effect::Done {
                call,
                outcome: Outcome::Refused(reason),
            });
            return;
        }
        let instance = consensus::instance_of(&keys[0]);
        self.start_round(call, instance, keys, RoundOp::Group(op), now_ms);
    }

    fn start_round(
        &mut self,
        call: CallId,
        instance: Bytes,
        keys: Vec<Bytes>,
        op: RoundOp,
        now_ms: u64,
    ) {
        if let Some(ahead_ms) = self.hlc.ahead_of_peers_ms(now_ms) {
            self.refuse_ahead(call, ahead_ms);
            return;
        }
        let adds = match &op {
            RoundOp::One(Cas::Read | Cas::Unlock { .. }) | RoundOp::Group(GroupCas::Read) => false,
            RoundOp::One(_) | RoundOp::Group(_) => true,
        };
        if adds && self.refuse_over_memory(call, now_ms) {
            return;
        }
        let mut replicas = None;
        for key in &keys {
            match self.replicas_of(key, call) {
                Some(set) => replicas = Some(set),
                None => return,
            }
        }
        let Some(replicas) = replicas else {
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
            instance,
            keys,
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
        let partition = self.store.partition_of(&round.instance);
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
        let ready = self.acceptor_ready(&round.instance);
        for (i, replica) in replicas.iter().enumerate() {
            if replica.local && !ready {
                // Still learning (learning.rs): the others must make the majority.
                round.waiting &= !(1 << i);
            } else if replica.local {
                round.waiting &= !(1 << i);
                match self.acceptors.prepare(&round.instance, ballot) {
                    Ok(promise) => {
                        let sessions = self.sessions_of(&round.keys);
                        round.promises.push((i, promise, sessions));
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
                    instance: round.instance.clone(),
                    keys: round.keys.clone(),
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

    /// This node's state of each of `keys`.
    pub(super) fn sessions_of(&self, keys: &[Bytes]) -> Vec<Option<Session>> {
        keys.iter().map(|key| self.store.session(key)).collect()
    }

    /// A replica's promise.
    pub(super) fn promised(
        &mut self,
        request: u64,
        from: SocketAddr,
        promise: Promise,
        sessions: Vec<Option<Session>>,
        now_ms: u64,
    ) {
        // The clock observes every stamp the answer carries, so a proposal
        // decided on it is stamped after them.
        let stamps = [
            promise.accepted.as_ref().map(|p| p.ballot.max(p.stamp)),
            Some(promise.committed.max(promise.committed_stamp)),
        ]
        .into_iter()
        .chain(
            sessions
                .iter()
                .map(|s| s.as_ref().map(Session::newest_stamp)),
        );
        if !self.observe_newest(from, stamps, now_ms) {
            return;
        }
        let Some(round) = self.in_flight.get_mut::<PendingRound>(request) else {
            return;
        };
        // An answer naming another number of keys is not to this round.
        if !matches!(round.phase, Phase::Prepare) || sessions.len() != round.keys.len() {
            return;
        }
        let Some(bit) = waiting_on(&round.replicas, round.waiting, from) else {
            return;
        };
        round.waiting &= !bit;
        let i = bit.trailing_zeros() as usize;
        round.promises.push((i, promise, sessions));
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

    /// Asks every replica to accept `proposal` under the attempt's ballot.
    pub(super) fn propose(
        &mut self,
        id: u64,
        mut round: PendingRound,
        mut proposal: Proposal,
        finishing: bool,
        before: Option<Vec<Option<Session>>>,
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
        let ready = self.acceptor_ready(&round.instance);
        for (i, replica) in replicas.iter().enumerate() {
            if replica.local && !ready {
                round.waiting &= !(1 << i);
            } else if replica.local {
                round.waiting &= !(1 << i);
                if let Err(promised) = self.acceptors.accept(&round.instance, proposal.clone()) {
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
                    instance: round.instance.clone(),
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
    pub(super) fn chosen(&mut self, id: u64, mut round: PendingRound, now_ms: u64) {
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
                self.commit_here(&round.instance, &proposal, now_ms);
                round.waiting &= !(1 << i);
                round.accepts += 1;
            } else if let Some(to) = replica.addr {
                let message = Message::Commit {
                    request: (!finishing).then_some(id),
                    instance: round.instance.clone(),
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
        let before = before
            .or_else(|| round.mine.take().map(|m| m.before))
            .unwrap_or_default();
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
    pub(super) fn answer_chosen(&mut self, mut round: PendingRound) {
        let Phase::Commit { proposal, before } =
            std::mem::replace(&mut round.phase, Phase::Backoff)
        else {
            return;
        };
        self.answer_decided(&round, before, Some(proposal));
    }

    /// Starts the operation again after a pause, unless its write was
    /// proposed (then it may be chosen yet: answered undecided) or its time
    /// is up.
    pub(super) fn retry_later(&mut self, mut round: PendingRound, now_ms: u64) {
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
        if here_too && !self.acceptor_ready(&round.instance) {
            reason = format!(
                "{reason}; this replica is still learning the key's consensus state \
                 from the others (after a start or a membership change)"
            );
        }
        self.undecided(round.call, reason, maybe_applied);
    }

    pub(super) fn undecided(&mut self, call: CallId, reason: String, maybe_applied: bool) {
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
