//! How a node measures its members' clocks and acts on what it finds: the
//! probes, the refusals of stamps too far ahead, and the episodes of this
//! node's own clock running ahead (see [`crate::peer_clocks`]).

use std::net::SocketAddr;

use super::in_flight::PendingWrite;
use super::{Effect, Node, NodeEvent, Timer, waiting_on};
use crate::Error;
use crate::clock::Stamp;
use crate::peer_clocks::Episode;
use crate::replication::{CallId, Hint, Outcome};
use crate::wire::Message;

impl Node {
    /// The runtime saw the wall clock step (it moved unlike the monotonic
    /// clock): every measurement of the peers' clocks is void. Until they
    /// are measured again, this node's writes reach its own copy only once
    /// another replica has accepted their stamps.
    pub fn clock_stepped(&mut self, now_ms: u64) {
        let episode = self.clocks.stepped(&self.hlc, now_ms);
        self.report_clock(episode);
        self.probe_clocks(now_ms);
        self.collect();
    }

    /// The member `name`'s clock less this node's, in ms, as last measured.
    pub fn clock_offset_of(&self, name: &str) -> Option<i64> {
        self.clocks.offset_of(name)
    }

    /// Asks every member for its clock.
    pub(super) fn probe_clocks(&mut self, now_ms: u64) {
        // Forget the members that are gone.
        let addrs = &self.addrs;
        let episode = self
            .clocks
            .retain(|name| addrs.contains_key(name), &self.hlc, now_ms);
        let names = &self.names;
        self.refusing.retain(|addr| names.contains_key(addr));
        self.report_clock(episode);
        let me = &self.membership.me().name;
        for (name, &to) in &self.addrs {
            if name != me {
                self.effects.push(Effect::Send {
                    to,
                    message: Message::ClockProbe { sent_ms: now_ms },
                });
            }
        }
    }

    /// Measures the clock of the member at `from` from its answer to a probe.
    pub(super) fn clock_measured(
        &mut self,
        from: SocketAddr,
        clock_ms: u64,
        sent_ms: u64,
        now_ms: u64,
    ) {
        let Some(name) = self.names.get(&from).cloned() else {
            return;
        };
        let episode = self
            .clocks
            .record(&name, clock_ms, sent_ms, now_ms, &self.hlc, now_ms);
        let within = self.clocks.offset_of(&name).is_some_and(|o| {
            o <= i64::try_from(self.config.max_clock_drift_ms).unwrap_or(i64::MAX)
        });
        if within {
            // Its stamps are acceptable again: a next refusal is news.
            self.refusing.remove(&from);
        }
        self.report_clock(episode);
    }

    /// A replica refused the stamp of write `request`: its clock is a
    /// reading too. A write whose own copy waited for an acceptance that
    /// no replica gave is stored nowhere.
    pub(super) fn stamp_refused(
        &mut self,
        request: u64,
        from: SocketAddr,
        clock_ms: u64,
        now_ms: u64,
    ) {
        if let Some(name) = self.names.get(&from).cloned() {
            let episode = self
                .clocks
                .record(&name, clock_ms, now_ms, now_ms, &self.hlc, now_ms);
            self.report_clock(episode);
        }
        if let Some(hint) = self.in_flight.take::<Hint>(request) {
            // Kept for a later attempt, as an unacknowledged replay is.
            self.hints.push(hint);
            return;
        }
        let Some(pending) = self.in_flight.get_mut::<PendingWrite>(request) else {
            return;
        };
        let Some(bit) = waiting_on(&pending.replicas, pending.waiting, from) else {
            return;
        };
        pending.waiting &= !bit;
        let ahead = pending.stamp.wall_ms().saturating_sub(clock_ms).max(1);
        pending.refused_ahead_ms = pending.refused_ahead_ms.max(ahead);
        let own = pending.deferred.map_or(0, |i| 1 << i);
        if pending.waiting & !own != 0 {
            return;
        }
        let Some(pending) = self.in_flight.take::<PendingWrite>(request) else {
            return;
        };
        if pending.deferred.is_some() {
            // Every other replica answered, and none took the stamp.
            self.refuse_ahead(pending.call, pending.refused_ahead_ms);
        } else {
            self.write_settled(pending);
        }
    }

    /// Answers `call`: this node's clock runs `ahead_ms` ahead of its peers.
    /// A stamp for `call`'s write, or `None` when this node's clock runs
    /// too far ahead of its peers' (the call is then answered so).
    pub(super) fn stamp_or_refuse(&mut self, call: CallId, now_ms: u64) -> Option<Stamp> {
        match self.hlc.try_stamp(now_ms) {
            Ok(stamp) => Some(stamp),
            Err(Error::ClockAhead { ahead_ms, .. }) => {
                self.refuse_ahead(call, ahead_ms);
                None
            }
            Err(_) => unreachable!("stamping fails only for a clock ahead"),
        }
    }

    pub(super) fn refuse_ahead(&mut self, call: CallId, ahead_ms: u64) {
        self.stats.writes_refused_clock_ahead += 1;
        self.effects.push(Effect::Done {
            call,
            outcome: Outcome::ClockAhead {
                ahead_ms,
                max_drift_ms: self.config.max_clock_drift_ms,
            },
        });
    }

    /// Counts a stamp from `from` refused for running ahead, and reports
    /// the first of an episode.
    /// Has the clock observe the newest of the stamps a peer sent, so that
    /// whatever this node stamps next comes after them; `false`, with the
    /// refusal reported, when that one is too far ahead to observe.
    pub(super) fn observe_newest(
        &mut self,
        from: SocketAddr,
        stamps: impl IntoIterator<Item = Option<Stamp>>,
        now_ms: u64,
    ) -> bool {
        let Some(newest) = stamps.into_iter().flatten().max() else {
            return true;
        };
        match self.hlc.observe(newest, now_ms) {
            Ok(_) => true,
            Err(e) => {
                self.refuse_drift(from, &e);
                false
            }
        }
    }

    pub(super) fn refuse_drift(&mut self, from: SocketAddr, error: &Error) {
        self.stats.clock_drift_refused += 1;
        if self.refusing.insert(from) {
            self.effects
                .push(Effect::Event(NodeEvent::ClockDriftRefused {
                    from,
                    reason: error.to_string(),
                }));
        }
    }

    fn report_clock(&mut self, episode: Option<Episode>) {
        let event = match episode {
            None => return,
            Some(Episode::Ahead { ahead_ms }) => NodeEvent::ClockAhead { ahead_ms },
            Some(Episode::InSync) => NodeEvent::ClockInSync,
        };
        self.effects.push(Effect::Event(event));
    }

    /// Measures the members' clocks soon, outside the periodic round (a
    /// member came or went).
    pub(super) fn probe_clocks_soon(&mut self) {
        self.schedule(0, Timer::ProbeClocks { periodic: false });
    }
}
