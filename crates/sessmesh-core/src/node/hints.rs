//! Hints: writes a replica missed, kept here and replayed once it is seen
//! again, until it acknowledges them.

use super::*;

impl Node {
    /// How often hints are retried, at most.
    pub(super) const HINT_REPLAY_MS: u64 = 1_000;

    pub(super) fn schedule_hint_replay(&mut self) {
        self.schedule(Self::HINT_REPLAY_MS, Timer::ReplayHints);
    }

    /// Sends every replica that is up the writes it missed, as replays to
    /// acknowledge: a hint goes only once its replica has it.
    pub(super) fn replay_hints(&mut self) {
        let addrs = &self.addrs;
        let hints = self.hints.take_where(|h| addrs.contains_key(&h.replica));
        for hint in hints {
            let Some(&to) = self.addrs.get(&hint.replica) else {
                continue;
            };
            let id = self.in_flight.next_id();
            let message = Message::HintReplay {
                request: id,
                key: hint.key.clone(),
                write: hint.write.clone(),
                stamp: hint.stamp,
            };
            self.effects.push(Effect::Send { to, message });
            self.schedule_deadline(id);
            self.in_flight.insert(id, Pending::Replay(hint));
        }
    }

    /// A replica applied a replayed hint.
    pub(super) fn hint_acknowledged(&mut self, request: u64) {
        if self.in_flight.take::<Hint>(request).is_some() {
            self.stats.hints_replayed += 1;
        }
    }
}
