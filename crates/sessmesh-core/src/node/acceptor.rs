//! The replica side of consensus: promises, acceptances and commits (see
//! [`crate::consensus`]). Every ballot and stamp a coordinator sends is
//! checked against this node's clock first, as a write's is.

use super::*;
use crate::consensus::{self, MAX_GROUP_KEYS};

impl Node {
    /// A coordinator's prepare of `instance` for `keys`: promised (with
    /// this replica's accepted proposal, newest commit and state of each
    /// key) or rejected. A prepare naming a key of another instance, or no
    /// key, is malformed: it is not answered.
    #[allow(clippy::too_many_arguments, reason = "the fields of one message")]
    pub(super) fn serve_prepare(
        &mut self,
        from: SocketAddr,
        request: u64,
        instance: &[u8],
        keys: &[Bytes],
        ballot: Ballot,
        view: u64,
        now_ms: u64,
    ) {
        if keys.is_empty()
            || keys.len() > MAX_GROUP_KEYS
            || keys.iter().any(|k| consensus::instance_of(k) != instance)
        {
            return;
        }
        if !self.observe_newest(from, [Some(ballot)], now_ms) {
            return;
        }
        if self.refuse_other_view(from, request, instance, view) {
            return;
        }
        // Still learning what it may have promised: no answer (learning.rs).
        if !self.acceptor_ready(instance) {
            return;
        }
        let message = match self.acceptors.prepare(instance, ballot) {
            Ok(promise) => Message::Promise {
                request,
                accepted: promise.accepted,
                committed: promise.committed,
                committed_stamp: promise.committed_stamp,
                recent: promise.recent,
                sessions: self.sessions_of(keys),
            },
            Err(promised) => Message::Rejected { request, promised },
        };
        self.effects.push(Effect::Send { to: from, message });
    }

    /// A coordinator's proposal for `instance`: accepted or rejected. A
    /// proposal writing a key of another instance is malformed: it is not
    /// answered.
    pub(super) fn serve_propose(
        &mut self,
        from: SocketAddr,
        request: u64,
        instance: &[u8],
        proposal: Proposal,
        view: u64,
        now_ms: u64,
    ) {
        if proposal.writes.len() > MAX_GROUP_KEYS
            || proposal
                .writes
                .iter()
                .any(|(k, _)| consensus::instance_of(k) != instance)
        {
            return;
        }
        if !self.observe_newest(from, [Some(proposal.ballot), Some(proposal.stamp)], now_ms) {
            return;
        }
        if self.refuse_other_view(from, request, instance, view) {
            return;
        }
        if !self.acceptor_ready(instance) {
            return;
        }
        let message = match self.acceptors.accept(instance, proposal) {
            Ok(()) => Message::Accepted { request },
            Err(promised) => Message::Rejected { request, promised },
        };
        self.effects.push(Effect::Send { to: from, message });
    }

    /// Answers `Moving` to a round whose coordinator sees another replica
    /// set for `instance` than this node does: majorities of two different
    /// sets need not meet, so only replicas that agree on the set take part.
    fn refuse_other_view(
        &mut self,
        from: SocketAddr,
        request: u64,
        instance: &[u8],
        view: u64,
    ) -> bool {
        if self.view_for(self.store.partition_of(instance)) == view {
            return false;
        }
        self.effects.push(Effect::Send {
            to: from,
            message: Message::Moving { request },
        });
        true
    }

    /// A chosen proposal: its write applied as an ordinary write.
    pub(super) fn serve_commit(
        &mut self,
        from: SocketAddr,
        request: Option<u64>,
        instance: &[u8],
        proposal: &Proposal,
        now_ms: u64,
    ) {
        if !self.observe_newest(from, [Some(proposal.ballot), Some(proposal.stamp)], now_ms) {
            return;
        }
        self.commit_here(instance, proposal, now_ms);
        if let Some(request) = request {
            self.effects.push(Effect::Send {
                to: from,
                message: Message::Committed { request },
            });
        }
    }

    /// Applies a chosen proposal's writes here and records it committed.
    /// A write to a key of another instance (only a malformed message has
    /// one) is left out.
    pub(super) fn commit_here(&mut self, instance: &[u8], proposal: &Proposal, now_ms: u64) {
        for (key, write) in &proposal.writes {
            if consensus::instance_of(key) == instance {
                // A key over the limit never gets this far: the coordinator refuses it.
                let _ = self.store.apply(key, write, proposal.stamp, now_ms);
            }
        }
        self.acceptors.commit(instance, proposal);
    }
}
