//! The replica side: what this node does with requests other nodes'
//! coordinators, repairs and handoffs send it. Every stamp a peer sends is
//! checked against this node's clock first (see `clocks.rs`); a stamp too
//! far ahead is refused, and nothing carrying it is applied or acknowledged.

use super::*;

impl Node {
    /// A coordinator's write: applied and acknowledged, or its stamp refused.
    pub(super) fn apply_write(
        &mut self,
        from: SocketAddr,
        request: u64,
        key: &[u8],
        write: &Write,
        stamp: Stamp,
        now_ms: u64,
    ) -> bool {
        if let Err(e) = self.hlc.observe(stamp, now_ms) {
            self.refuse_drift(from, &e);
            self.effects.push(Effect::Send {
                to: from,
                message: Message::StampRefused {
                    request,
                    clock_ms: now_ms,
                },
            });
            return false;
        }
        self.store.apply(key, write, stamp, now_ms).is_ok()
    }

    /// Answers a coordinator's read with this node's state of `key`.
    pub(super) fn serve_read(&mut self, from: SocketAddr, request: u64, key: &[u8]) {
        self.store.note_use(key);
        let session = self.store.session(key);
        self.effects.push(Effect::Send {
            to: from,
            message: Message::ReadReply { request, session },
        });
    }

    /// Answers a coordinator's read with the fingerprint of this node's
    /// state of `key`.
    pub(super) fn serve_digest(&mut self, from: SocketAddr, request: u64, key: &[u8]) {
        self.store.note_use(key);
        let fingerprint = self.store.fingerprint(key);
        self.effects.push(Effect::Send {
            to: from,
            message: Message::DigestReply {
                request,
                fingerprint,
            },
        });
    }

    /// Merges sessions from a peer. Returns whether every one of them was
    /// merged (none refused for its stamp or its key), and how many changed
    /// what this node held.
    pub(super) fn merge_entries(
        &mut self,
        from: SocketAddr,
        entries: Vec<Entry>,
        now_ms: u64,
    ) -> (bool, u64) {
        let mut all_merged = true;
        let mut changed = 0;
        for Entry { key, session } in entries {
            match self.hlc.observe(session.newest_stamp(), now_ms) {
                Err(e) => {
                    self.refuse_drift(from, &e);
                    all_merged = false;
                }
                // A key over the limit comes only from a broken peer; skip it.
                Ok(()) => match self.store.merge_remote(&key, session, now_ms) {
                    Ok(true) => changed += 1,
                    Ok(false) => {}
                    Err(_) => all_merged = false,
                },
            }
        }
        (all_merged, changed)
    }

    /// Answers a peer's clock probe with this node's wall clock.
    pub(super) fn answer_probe(&mut self, from: SocketAddr, sent_ms: u64, now_ms: u64) {
        self.effects.push(Effect::Send {
            to: from,
            message: Message::ClockReply {
                sent_ms,
                clock_ms: now_ms,
            },
        });
    }
}
