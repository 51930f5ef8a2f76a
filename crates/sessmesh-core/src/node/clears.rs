//! Clears of key ranges (a Redis `FLUSHDB`): stamped here, applied to this
//! node's store, sent to every other member, and answered once each has
//! acknowledged it (or, short of that, at the request timeout, as a write
//! short of copies is). Every anti-entropy round also hands the clears
//! kept to the peers it compares with, so a member that missed one (down,
//! or cut off) gets it when it is back; the store keeps each for the
//! tombstone grace period (see `store/clears.rs`).

use super::*;
use crate::store::KeyRange;

/// A clear waiting for the members' acknowledgements.
#[derive(Debug)]
pub(crate) struct PendingClear {
    pub(crate) call: CallId,
    pub(crate) stamp: Stamp,
    /// Members that have not acknowledged yet.
    pub(crate) waiting: BTreeSet<String>,
    /// Acknowledgements, this node's own included.
    pub(crate) acks: usize,
    /// Acknowledgements needed: every active member's.
    pub(crate) needed: usize,
}

impl Node {
    /// Coordinates a clear of every key in `range` written before now; its
    /// [`Outcome`] comes as an [`Effect::Done`] for `call`: `Written` once
    /// every active member holds it, `TooFewAcks` at the request timeout
    /// while some do not (it is kept, and spreads to them later).
    pub fn clear(&mut self, call: CallId, range: KeyRange, now_ms: u64) {
        let Some(stamp) = self.stamp_or_refuse(call, now_ms) else {
            return;
        };
        self.store.clear(&range, stamp, now_ms);
        let me = self.membership.me().name.clone();
        let others: Vec<(String, SocketAddr)> = self
            .addrs
            .iter()
            .filter(|(name, _)| **name != me)
            .map(|(name, addr)| (name.clone(), *addr))
            .collect();
        let pending = PendingClear {
            call,
            stamp,
            waiting: others.iter().map(|(name, _)| name.clone()).collect(),
            acks: 1,
            needed: others.len() + 1,
        };
        if others.is_empty() {
            self.clear_done(pending);
            return;
        }
        let id = self.in_flight.next_id();
        for (_, to) in others {
            self.effects.push(Effect::Send {
                to,
                message: Message::Clear {
                    request: id,
                    range: range.clone(),
                    stamp,
                },
            });
        }
        self.in_flight.insert(id, Pending::Clear(pending));
        self.schedule(self.config.request_timeout_ms, Timer::Request(id));
    }

    /// A member's clear: applied and acknowledged, unless its stamp is
    /// too far ahead of this node's clock.
    pub(super) fn serve_clear(
        &mut self,
        from: SocketAddr,
        request: u64,
        range: &KeyRange,
        stamp: Stamp,
        now_ms: u64,
    ) {
        if self.take_clear(from, range, stamp, now_ms) {
            self.effects.push(Effect::Send {
                to: from,
                message: Message::ClearAck { request },
            });
        }
    }

    /// Applies a peer's clear; whether it was taken (its stamp within the
    /// drift bound). Observing the stamp first makes every later write
    /// this node stamps come after the clear.
    fn take_clear(
        &mut self,
        from: SocketAddr,
        range: &KeyRange,
        stamp: Stamp,
        now_ms: u64,
    ) -> bool {
        if let Err(e) = self.hlc.observe(stamp, now_ms) {
            self.refuse_drift(from, &e);
            return false;
        }
        self.store.clear(range, stamp, now_ms);
        true
    }

    /// A member acknowledged clear `request`.
    pub(super) fn clear_acknowledged(&mut self, request: u64, from: SocketAddr) {
        let Some(name) = self.names.get(&from).cloned() else {
            return;
        };
        let Some(pending) = self.in_flight.get_mut::<PendingClear>(request) else {
            return;
        };
        if pending.waiting.remove(&name) {
            pending.acks += 1;
        }
        if pending.waiting.is_empty()
            && let Some(pending) = self.in_flight.take::<PendingClear>(request)
        {
            self.clear_done(pending);
        }
    }

    /// A clear some members did not acknowledge in time.
    pub(super) fn clear_expired(&mut self, pending: PendingClear) {
        self.effects.push(Effect::Done {
            call: pending.call,
            outcome: Outcome::TooFewAcks {
                acks: pending.acks,
                needed: pending.needed,
            },
        });
    }

    fn clear_done(&mut self, pending: PendingClear) {
        self.effects.push(Effect::Done {
            call: pending.call,
            outcome: Outcome::Written {
                acks: pending.acks,
                stamp: pending.stamp,
                existed: None,
            },
        });
    }

    /// The clears kept, for a peer an anti-entropy round compares with.
    pub(super) fn send_clears(&mut self, to: SocketAddr) {
        let clears = self.store.clears();
        if !clears.is_empty() {
            self.effects.push(Effect::Send {
                to,
                message: Message::Clears { clears },
            });
        }
    }

    /// A peer's clears, from its anti-entropy round.
    pub(super) fn merge_clears(
        &mut self,
        from: SocketAddr,
        clears: Vec<(KeyRange, Stamp)>,
        now_ms: u64,
    ) {
        for (range, stamp) in clears {
            self.take_clear(from, &range, stamp, now_ms);
        }
    }
}
