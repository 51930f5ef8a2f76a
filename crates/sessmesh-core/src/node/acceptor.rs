//! The replica side of consensus: promises, acceptances and commits (see
//! [`crate::consensus`]). Every ballot and stamp a coordinator sends is
//! checked against this node's clock first, as a write's is.

use super::*;

impl Node {
    /// A coordinator's prepare: promised (with this replica's accepted
    /// proposal, newest commit and state of the key) or rejected.
    pub(super) fn serve_prepare(
        &mut self,
        from: SocketAddr,
        request: u64,
        key: Bytes,
        ballot: Ballot,
        view: u64,
        now_ms: u64,
    ) {
        if !self.observe_newest(from, [Some(ballot)], now_ms) {
            return;
        }
        if self.refuse_other_view(from, request, &key, view) {
            return;
        }
        // Still learning what it may have promised: no answer (learning.rs).
        if !self.acceptor_ready(&key) {
            return;
        }
        let message = match self.acceptors.prepare(&key, ballot) {
            Ok(promise) => Message::Promise {
                request,
                accepted: promise.accepted,
                committed: promise.committed,
                committed_stamp: promise.committed_stamp,
                recent: promise.recent,
                session: self.store.session(&key).map(Box::new),
            },
            Err(promised) => Message::Rejected { request, promised },
        };
        self.effects.push(Effect::Send { to: from, message });
    }

    /// A coordinator's proposal: accepted or rejected.
    pub(super) fn serve_propose(
        &mut self,
        from: SocketAddr,
        request: u64,
        key: &[u8],
        proposal: Proposal,
        view: u64,
        now_ms: u64,
    ) {
        if !self.observe_newest(from, [Some(proposal.ballot), Some(proposal.stamp)], now_ms) {
            return;
        }
        if self.refuse_other_view(from, request, key, view) {
            return;
        }
        if !self.acceptor_ready(key) {
            return;
        }
        let message = match self.acceptors.accept(key, proposal) {
            Ok(()) => Message::Accepted { request },
            Err(promised) => Message::Rejected { request, promised },
        };
        self.effects.push(Effect::Send { to: from, message });
    }

    /// Answers `Moving` to a round whose coordinator sees another replica
    /// set for `key` than this node does: majorities of two different sets
    /// need not meet, so only replicas that agree on the set take part.
    fn refuse_other_view(&mut self, from: SocketAddr, request: u64, key: &[u8], view: u64) -> bool {
        if self.view_for(self.store.partition_of(key)) == view {
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
        key: &[u8],
        proposal: &Proposal,
        now_ms: u64,
    ) {
        if !self.observe_newest(from, [Some(proposal.ballot), Some(proposal.stamp)], now_ms) {
            return;
        }
        self.commit_here(key, proposal, now_ms);
        if let Some(request) = request {
            self.effects.push(Effect::Send {
                to: from,
                message: Message::Committed { request },
            });
        }
    }

    /// Applies a chosen proposal's write here and records it committed.
    pub(super) fn commit_here(&mut self, key: &[u8], proposal: &Proposal, now_ms: u64) {
        // A key over the limit never gets this far: the coordinator refuses it.
        let _ = self
            .store
            .apply(key, &proposal.write, proposal.stamp, now_ms);
        self.acceptors.commit(key, proposal);
    }
}
