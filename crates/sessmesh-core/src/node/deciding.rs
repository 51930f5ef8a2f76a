//! What a coordinator of consensus does once a majority promised its
//! ballot: finds out what became of its operation's own proposal from an
//! earlier attempt, finishes another round's proposal that may have been
//! chosen, or decides the operation on the state the majority reported
//! (see [`crate::consensus`] and `consensus.rs`).

use super::in_flight::Mine;
use super::*;
use crate::consensus;
use crate::replication::{Decision, GroupDecision};

impl Node {
    /// A majority promised: finish what one of them accepted and may not
    /// have been committed, or decide the operation and propose its write.
    pub(super) fn promised_by_majority(&mut self, id: u64, mut round: PendingRound, now_ms: u64) {
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
                self.applied(&round, mine);
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
                        .flat_map(|(_, _, sessions)| sessions.iter().flatten())
                        .any(|s| s.holds_stamp(mine.proposal.stamp));
                    if held {
                        self.applied(&round, mine);
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
    pub(super) fn applied(&mut self, round: &PendingRound, mine: Mine) {
        self.answer_decided(round, mine.before, Some(mine.proposal));
    }

    /// Answers an operation decided on `before`, with its chosen proposal
    /// if it wrote.
    pub(super) fn answer_decided(
        &mut self,
        round: &PendingRound,
        before: Vec<Option<Session>>,
        chosen: Option<Proposal>,
    ) {
        let outcome = match round.op {
            RoundOp::One(_) => Outcome::Decided(Box::new(Decision {
                applied: chosen.is_some(),
                before: before.into_iter().next().flatten(),
                written: chosen.and_then(|p| {
                    let stamp = p.stamp;
                    p.writes.into_iter().next().map(|(_, w)| (w, stamp))
                }),
            })),
            RoundOp::Group(_) => Outcome::DecidedGroup(Box::new(GroupDecision {
                applied: chosen.is_some(),
                before,
                stamp: chosen.as_ref().map(|p| p.stamp),
                written: chosen.map(|p| p.writes).unwrap_or_default(),
            })),
        };
        self.effects.push(Effect::Done {
            call: round.call,
            outcome,
        });
    }

    /// Proposes another round's proposal that may have been chosen, under
    /// this attempt's ballot.
    pub(super) fn finish(
        &mut self,
        id: u64,
        round: PendingRound,
        in_progress: Option<Proposal>,
        now_ms: u64,
    ) {
        let Some(unfinished) = in_progress else {
            return;
        };
        let proposal = Proposal {
            ballot: round.ballot,
            writes: unfinished.writes,
            stamp: unfinished.stamp,
            recent: unfinished.recent,
        };
        self.propose(id, round, proposal, true, None, now_ms);
    }

    /// Decides the operation on the state the majority reported, and
    /// proposes its write if it has one.
    pub(super) fn decide(
        &mut self,
        id: u64,
        mut round: PendingRound,
        newest_commit: Ballot,
        now_ms: u64,
    ) {
        let mut current: Vec<Option<Session>> = vec![None; round.keys.len()];
        for (_, _, sessions) in &round.promises {
            for (merged, session) in current.iter_mut().zip(sessions) {
                if let Some(session) = session {
                    match merged {
                        Some(merged) => merged.merge(session.clone()),
                        None => *merged = Some(session.clone()),
                    }
                }
            }
        }
        let decided = match &round.op {
            RoundOp::One(op) => op
                .decide(current[0].as_ref(), now_ms)
                .map(|d| vec![d.write]),
            RoundOp::Group(op) => {
                let states: Vec<Option<&Session>> = current.iter().map(Option::as_ref).collect();
                op.decide(&states, now_ms)
            }
        };
        let writes: Vec<(Bytes, Write)> = match decided {
            Ok(writes) => round
                .keys
                .iter()
                .zip(writes)
                .filter_map(|(key, write)| Some((key.clone(), write?)))
                .collect(),
            Err(e) => {
                self.effects.push(Effect::Done {
                    call: round.call,
                    outcome: Outcome::Refused(e.to_string()),
                });
                return;
            }
        };
        if writes.is_empty() {
            self.answer_decided(&round, current, None);
            return;
        }
        // Newer than every value the majority reported: the clock observed them.
        let Some(stamp) = self.stamp_or_refuse(round.call, now_ms) else {
            return;
        };
        let proposal = Proposal {
            ballot: round.ballot,
            writes,
            stamp,
            recent: Vec::new(),
        };
        round.mine = Some(Mine {
            proposal: proposal.clone(),
            before: current.clone(),
            seen_commit: newest_commit,
        });
        self.propose(id, round, proposal, false, Some(current), now_ms);
    }
}
